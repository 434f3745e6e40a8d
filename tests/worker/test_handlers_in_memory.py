"""The images.v1 and queries.v1 handlers on FastStream's in-memory ``TestKafkaBroker``.

Kafka is in memory here; S3 (the session's moto server), milvus-lite and the random:tiny
CLIP model are real. ``TestKafkaBroker`` runs the subscriber's handler inside
``publish()`` with one record per batch, and has no offsets, groups, commits or
rebalances: what the delivery code asks of aiokafka's consumer (``commit`` and ``seek``)
is recorded by ``RecordingConsumer`` instead, handed to the subscriber through the same
parser hook FastStream's own start uses. Delivery guarantees against a real broker stay
in the integration tests (test_delivery, test_shutdown_rebalance, test_chaos).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from faststream.kafka import KafkaBroker, TestKafkaBroker

from consumers.config.settings import (
    ClipSettings,
    DeliverySettings,
    MetricsSettings,
    MilvusSettings,
    S3Settings,
    Settings,
)
from consumers.pipeline.s3 import S3Store
from consumers.worker.service import ConsumerService
from schemas.events import ErrorCode, TaskResult, TextQuery, dump, utcnow
from schemas.rpc import RpcReply
from tests.helpers import event, sample_jpeg, upload

PARTITION = 0  # TestKafkaBroker delivers every record on partition 0 at offset 0


class RecordingConsumer:
    """The two calls the delivery code makes on aiokafka's consumer, recorded, with how
    many results had been published when each commit came."""

    def __init__(self, published: Callable[[], int]) -> None:
        self.published = published
        self.commits: list[dict[TopicPartition, int]] = []
        self.published_at_commit: list[int] = []
        self.seeks: list[tuple[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))
        self.published_at_commit.append(self.published())

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition, offset))


def _settings(s3: S3Settings, folder: Path, models: Path) -> Settings:
    """random:tiny CLIP only; prefetch off, so ``publish()`` returns once the batch is
    delivered (published and committed, or rewound); quick retries for the outage test."""
    settings = Settings(
        _env_file=None,
        s3=s3,
        milvus=MilvusSettings(uri=str(folder / "milvus.db")),
        metrics=MetricsSettings(port=0),
        clip=ClipSettings(model="random:tiny", device="cpu", max_records=8),
        delivery=DeliverySettings(prefetch="off", retry_delays_s=[0.01], replay_pause_s=0.01),
        model_cache_dir=models,
    )
    others = {
        name: settings.task(name).model_copy(update={"enabled": False})
        for name in settings.task_names()
        if name != "clip"
    }
    return settings.model_copy(update=others)


class InMemory:
    """A started ConsumerService on a TestKafkaBroker, with what it published."""

    def __init__(self, service: ConsumerService, broker: KafkaBroker) -> None:
        self.service = service
        self.broker = broker
        self.consumer = RecordingConsumer(lambda: len(self.results()))
        for subscriber in broker.subscribers:
            parser = getattr(subscriber, "parser", None)
            if parser is not None:
                parser._setup(self.consumer)

    def results(self) -> list[TaskResult]:
        return [
            TaskResult.model_validate(_json(b)) for b in _bodies(self.service.publisher.results)
        ]

    def dead_letters(self) -> list[Any]:
        return _bodies(self.service.publisher.dlq)

    async def submit(self, value: bytes, key: bytes, topic: str | None = None) -> None:
        topic = topic or self.service.topics.images
        await self.broker.publish(value, topic=topic, key=key)


def _bodies(publisher: Any) -> list[Any]:
    return [call.args[0] for call in publisher.mock.call_args_list]


def _json(body: Any) -> Any:
    return json.loads(body) if isinstance(body, bytes | str) else body


def _maybe_json(value: bytes) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


@pytest.fixture(scope="module")
async def memory(
    s3_server: S3Settings, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[InMemory]:
    settings = _settings(s3_server, tmp_path_factory.mktemp("milvus"), model_cache)
    service = ConsumerService(settings, ["clip"])
    async with TestKafkaBroker(service.broker) as broker:
        await service.start()
        try:
            yield InMemory(service, broker)
        finally:
            await service.stop()


def _forget(memory: InMemory) -> None:
    memory.service.publisher.results.mock.reset_mock()
    memory.service.publisher.dlq.mock.reset_mock()
    for recorded in (memory.consumer.commits, memory.consumer.published_at_commit):
        recorded.clear()
    memory.consumer.seeks.clear()


@pytest.fixture(autouse=True)
def _fresh(memory: InMemory) -> None:
    """Each test sees only what it published."""
    _forget(memory)


def _committed(topic: str) -> list[dict[TopicPartition, int]]:
    """One batch of one record, committed: the next offset to read is 1."""
    return [{TopicPartition(topic, PARTITION): 1}]


async def _stored(memory: InMemory, *names: str) -> list[str]:
    """Upload sample photos under fresh ids and run them through the clip handler."""
    ids = []
    for name in names:
        image_id = f"{name}-{uuid.uuid4().hex[:6]}"
        await upload(memory.service.settings, {f"mem/{image_id}.jpg": sample_jpeg(name)})
        submitted = event(image_id, f"s3://images/mem/{image_id}.jpg", top_k=5)
        await memory.submit(dump(submitted), image_id.encode())
        ids.append(image_id)
    return ids


async def test_an_image_event_gets_one_result_then_its_offset_is_committed(
    memory: InMemory,
) -> None:
    first, second = await _stored(memory, "astronaut", "astronaut")
    results = memory.results()
    assert [(r.image_id, r.task, r.status.value) for r in results] == [
        (first, "clip", "ok"),
        (second, "clip", "ok"),
    ]
    # The same photo under another id is the second one's nearest neighbour, never itself.
    neighbours = [n.id for n in results[1].neighbors]
    assert neighbours[0] == first
    assert second not in neighbours
    assert results[1].neighbors[0].score == pytest.approx(1.0, abs=1e-3)
    topic = memory.service.topics.images
    assert memory.consumer.commits == 2 * _committed(topic)
    assert memory.consumer.published_at_commit == [1, 2], "each batch commits after its result"
    assert memory.dead_letters() == []


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (b"{not json", ErrorCode.INVALID_EVENT),
        (b'{"event_id": "e", "image_id": "i"}', ErrorCode.INVALID_EVENT),
        (b'{"event_id": "e", "image_id": "i", "uri": "s3://images/mem/none.jpg"}', None),
    ],
    ids=["not-json", "no-uri", "missing-object"],
)
async def test_bad_input_is_an_error_result_and_a_dead_letter(
    memory: InMemory, value: bytes, code: ErrorCode | None
) -> None:
    await memory.submit(value, b"bad-key")
    (result,) = memory.results()
    assert result.status.value == "error"
    assert result.error is not None
    assert result.error.code == (code or ErrorCode.OBJECT_NOT_FOUND)
    # The DLQ keeps the record's bytes as they came (the in-memory reader decodes JSON).
    assert memory.dead_letters() == [_maybe_json(value)]
    assert memory.consumer.commits == _committed(memory.service.topics.images)


async def test_an_event_for_another_task_is_committed_without_a_result(memory: InMemory) -> None:
    other = event("face-only", "s3://images/mem/none.jpg", tasks=["face"])
    await memory.submit(dump(other), b"face-only")
    assert memory.results() == []
    assert memory.consumer.commits == _committed(memory.service.topics.images)


async def test_an_s3_outage_rewinds_the_batch_instead_of_answering(memory: InMemory) -> None:
    pipeline = memory.service.workers["clip"].pipeline
    reachable = pipeline.s3
    closed_port = {"endpoint_url": "http://127.0.0.1:9", "connect_timeout_s": 0.5}
    unreachable = S3Store(memory.service.settings.s3.model_copy(update=closed_port))
    await unreachable.start()
    pipeline.s3 = unreachable
    try:
        await _stored(memory, "camera")
    finally:
        pipeline.s3 = reachable
        await unreachable.close()
    assert memory.results() == []
    assert memory.consumer.commits == []
    topic = memory.service.topics.images
    assert memory.consumer.seeks == [(TopicPartition(topic, PARTITION), 0)]


async def test_a_text_query_ranks_the_stored_images(memory: InMemory) -> None:
    (stored,) = await _stored(memory, "coffee")
    _forget(memory)  # only the query's result and commit from here on
    query = TextQuery(event_id="q-e", query_id="q-1", text="a cup of coffee", top_k=50)
    await memory.submit(dump(query), b"q-1", topic=memory.service.topics.queries)
    (result,) = memory.results()
    assert (result.task, result.image_id, result.status.value) == ("search", "q-1", "ok")
    assert stored in [n.id for n in result.neighbors]
    assert memory.consumer.commits == _committed(memory.service.topics.queries)


async def test_a_blank_text_query_is_an_invalid_event(memory: InMemory) -> None:
    blank = b'{"event_id": "q-e2", "query_id": "q-2", "text": "  "}'
    await memory.submit(blank, b"q-2", topic=memory.service.topics.queries)
    (result,) = memory.results()
    assert result.error is not None
    assert result.error.code == ErrorCode.INVALID_EVENT
    assert memory.consumer.commits == _committed(memory.service.topics.queries)


async def _request(memory: InMemory, body: bytes) -> RpcReply:
    """One rpc.v1 request through FastStream's in-memory request/reply."""
    response = await memory.broker.request(body, topic=memory.service.topics.rpc, timeout=30)
    return RpcReply.model_validate_json(response.body)


async def test_an_rpc_text_request_is_answered_with_its_vector(memory: InMemory) -> None:
    deadline = (utcnow() + timedelta(minutes=1)).isoformat()
    request = {"kind": "embed", "texts": {"q": "a hedgehog"}, "deadline": deadline}
    reply = await _request(memory, json.dumps(request).encode())
    assert reply.error is None
    clip = memory.service.workers["clip"].pipeline.task
    assert (reply.model, reply.dim) == (clip.model_name, clip.dim)
    assert len(reply.vectors["q"]) == clip.dim


async def test_an_rpc_request_the_decoder_refuses_gets_an_error_reply(memory: InMemory) -> None:
    reply = await _request(memory, b'{"kind": "embed"}')  # no deadline
    assert reply.error is not None
    assert reply.error.code == ErrorCode.INVALID_EVENT
    assert "deadline" in reply.error.message
