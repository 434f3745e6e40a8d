"""The producer side, as a library and behind ``imagestream ingest``.

Uploads images to S3, publishes one ``ImageSubmitted`` per image (key = image id) and
reads ``results.v1`` until every (event, task) has its result. The result reader
starts at the end of every partition *before* anything is published, so it sees every
result of this run and nothing older.
"""

from __future__ import annotations

import asyncio
import mimetypes
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import BaseModel

from consumers.config.settings import Settings
from consumers.pipeline.s3 import S3Store
from consumers.worker.kafka import CLI_CLIENT_ID, client_kwargs, make_producer, started
from schemas.events import ImageSubmitted, TaskResult, dump
from schemas.topics import Topics


@dataclass(frozen=True)
class Upload:
    path: Path
    image_id: str


def uploads_for(paths: Sequence[Path], prefix: str = "") -> list[Upload]:
    """Image id = optional prefix + file stem; a folder contributes its image files."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path])
    return [Upload(p, f"{prefix}{p.stem}") for p in files]


@asynccontextmanager
async def result_reader(settings: Settings) -> AsyncIterator[AIOKafkaConsumer]:
    """A group-less consumer positioned at the current end of the results topic."""
    topic = Topics(settings.kafka.topic_prefix).results
    consumer = AIOKafkaConsumer(**client_kwargs(settings.kafka), enable_auto_commit=False)
    async with started(consumer):
        await consumer.topics()  # refreshes metadata so the partition list is current
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            raise RuntimeError(f"topic {topic!r} does not exist; is the stack up?")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the lazy seek now, before anything is published
            await consumer.position(tp)
        yield consumer


async def wait_for_results(
    consumer: AIOKafkaConsumer,
    expected: dict[str, set[str]],
    timeout_s: float,
    on_result: Callable[[TaskResult], None],
) -> list[TaskResult]:
    """Collect results until ``expected`` (event id -> tasks) is empty or time runs out."""
    results: list[TaskResult] = []
    deadline = asyncio.get_running_loop().time() + timeout_s
    while any(expected.values()):
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            break
        batches = await consumer.getmany(timeout_ms=int(min(remaining, 1.0) * 1000))
        for records in batches.values():
            for record in records:
                result = TaskResult.model_validate_json(record.value or b"{}")
                pending = expected.get(result.source_event_id)
                if pending is not None and result.task in pending:
                    pending.discard(result.task)
                    results.append(result)
                    on_result(result)
    return results


async def upload_all(s3: S3Store, bucket: str, uploads: Sequence[Upload]) -> list[str]:
    async def one(upload: Upload) -> str:
        key = f"ingest/{upload.image_id}{upload.path.suffix.lower()}"
        content_type = mimetypes.guess_type(upload.path.name)[0]
        data = await asyncio.to_thread(upload.path.read_bytes)
        await s3.put(bucket, key, data, content_type=content_type)
        return f"s3://{bucket}/{key}"

    await s3.ensure_bucket(bucket)
    return list(await asyncio.gather(*(one(u) for u in uploads)))


async def publish_events(settings: Settings, events: Sequence[ImageSubmitted]) -> None:
    topic = Topics(settings.kafka.topic_prefix).images
    await publish(settings, topic, [(e.image_id, e) for e in events])


async def publish(settings: Settings, topic: str, keyed: Sequence[tuple[str, BaseModel]]) -> None:
    """Publish (key, event) pairs and return once Kafka acknowledged every one."""
    async with started(make_producer(settings.kafka, CLI_CLIENT_ID)) as producer:
        sends = [await producer.send(topic, dump(e), key=key.encode()) for key, e in keyed]
        await asyncio.gather(*sends)


async def ingest(
    settings: Settings,
    uploads: Sequence[Upload],
    *,
    tasks: Sequence[str],
    top_k: int = 5,
    timeout_s: float = 300.0,
    on_result: Callable[[TaskResult], None] = lambda _: None,
) -> list[TaskResult]:
    async with S3Store(settings.s3) as s3:
        uris = await upload_all(s3, settings.s3.bucket, uploads)
    events = [
        ImageSubmitted(
            event_id=uuid.uuid4().hex, image_id=u.image_id, uri=uri, tasks=list(tasks), top_k=top_k
        )
        for u, uri in zip(uploads, uris, strict=True)
    ]
    expected = {e.event_id: set(tasks) for e in events}
    async with result_reader(settings) as reader:
        await publish_events(settings, events)
        return await wait_for_results(reader, expected, timeout_s, on_result)
