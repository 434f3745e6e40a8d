"""The CLIP path end to end through the real Tansu broker, moto S3 server and milvus-lite."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consumers.client.ingest import result_reader
from consumers.config.settings import DeliverySettings, S3Settings, Settings
from consumers.devstack.launcher import running_consumers
from consumers.devstack.servers import Broker
from consumers.worker.service import ConsumerService
from schemas.events import ErrorCode, Status, TaskResult
from tests.helpers import collect, event, produce, produce_events, sample_jpeg, upload
from tests.stack_settings import stack_settings

pytestmark = pytest.mark.integration
GOOD = ("astronaut", "coffee", "camera", "chelsea", "rocket")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def prefetch() -> str:
    return "auto"


@pytest.fixture
async def settings(
    kafka_broker: Broker, s3_server: S3Settings, tmp_path: Path, model_cache: Path, prefetch: str
) -> Settings:
    return await stack_settings(
        kafka_broker.bootstrap_servers,
        s3_server.model_copy(update={"max_object_bytes": 300_000}),
        tmp_path,
        model_cache,
        partitions=4,
        delivery=DeliverySettings(prefetch=prefetch),
    )


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[ConsumerService]:
    async with running_consumers(settings) as running:
        yield running


def _by_image(results: list[TaskResult]) -> dict[str, TaskResult]:
    return {r.image_id: r for r in results}


# Every prefetch mode; with fetch only, decode errors surface in the device half.
@pytest.mark.parametrize("prefetch", ["publish", "fetch", "decode", "off"])
async def test_events_in_results_out_with_bad_input_in_the_same_batch(
    settings: Settings, service: ConsumerService
) -> None:
    run = uuid.uuid4().hex[:6]
    objects = {f"{run}/{name}.jpg": sample_jpeg(name) for name in GOOD}
    objects[f"{run}/page.jpg"] = b"<html><body>not an image</body></html>"
    objects[f"{run}/big.jpg"] = os.urandom(400_000)
    await upload(settings, objects)
    uri = f"s3://{settings.s3.bucket}/{run}"
    events = [event(name, f"{uri}/{name}.jpg", top_k=3) for name in GOOD]
    events += [
        event("missing", f"{uri}/nothing-here.jpg"),
        event("page", f"{uri}/page.jpg"),
        event("big", f"{uri}/big.jpg"),
        event("elsewhere", "s3://not-allowed/x.jpg"),
    ]
    raw = [(b"broken", b'{"event_id": "x", '), (b"shapeless", b'{"event_id": "y"}')]
    async with result_reader(settings) as reader:
        await produce(settings, raw)
        await produce_events(settings, events)
        results = await collect(reader, len(events) + len(raw), timeout_s=90)

    by_image = _by_image(results)
    assert len(results) == len(by_image) == len(events) + len(raw)
    for name in GOOD:
        result = by_image[name]
        assert result.status is Status.OK, result.error
        assert (result.model, result.dim, result.task) == ("random:tiny", 32, "clip")
        assert len(result.neighbors) == 3
        assert name not in {n.id for n in result.neighbors}
        assert {n.id for n in result.neighbors} <= set(GOOD)
        scores = [n.score for n in result.neighbors]
        assert scores == sorted(scores, reverse=True)
        assert all(-1.0 <= s <= 1.0001 for s in scores)
        t = result.timings
        assert min(t.fetch, t.decode, t.encode, t.index, t.search) > 0
        assert t.total >= t.encode + t.index + t.search
    expected_errors = {
        "missing": ErrorCode.OBJECT_NOT_FOUND,
        "page": ErrorCode.NOT_AN_IMAGE,
        "big": ErrorCode.IMAGE_TOO_LARGE,
        "elsewhere": ErrorCode.BUCKET_NOT_ALLOWED,
        "broken": ErrorCode.INVALID_EVENT,
        "shapeless": ErrorCode.INVALID_EVENT,
    }
    for image_id, code in expected_errors.items():
        result = by_image[image_id]
        assert result.status is Status.ERROR
        assert result.error is not None
        assert result.error.code is code, result.error
        assert result.error.message


async def test_exact_duplicate_under_a_new_id_finds_the_original_first(
    settings: Settings, service: ConsumerService
) -> None:
    key = f"{uuid.uuid4().hex[:6]}/astronaut.jpg"
    others = {f"{key}.{name}.jpg": sample_jpeg(name) for name in ("coffee", "camera")}
    await upload(settings, {key: sample_jpeg("astronaut"), **others})
    bucket = settings.s3.bucket
    first = [event("original", f"s3://{bucket}/{key}")]
    first += [event(k.rsplit(".", 2)[-2], f"s3://{bucket}/{k}") for k in others]
    async with result_reader(settings) as reader:
        await produce_events(settings, first)
        assert len(await collect(reader, len(first), timeout_s=90)) == len(first)
        await produce_events(settings, [event("copy", f"s3://{bucket}/{key}", top_k=5)])
        (result,) = await collect(reader, 1, timeout_s=60)

    assert result.image_id == "copy"
    assert result.neighbors[0].id == "original"
    assert result.neighbors[0].score == pytest.approx(1.0, abs=1e-4)
    assert all(n.score < 0.9999 for n in result.neighbors[1:])


async def test_redelivered_event_yields_the_same_result_id_and_one_vector(
    settings: Settings, service: ConsumerService
) -> None:
    key = f"{uuid.uuid4().hex[:6]}/rocket.jpg"
    await upload(settings, {key: sample_jpeg("rocket")})
    submitted = event("rocket-1", f"s3://{settings.s3.bucket}/{key}")
    async with result_reader(settings) as reader:
        # One batch after the other: within one batch a repeated event id is processed once.
        await produce_events(settings, [submitted])
        results = await collect(reader, 1, timeout_s=90)
        await produce_events(settings, [submitted])
        results += await collect(reader, 1, timeout_s=90)
    assert len(results) == 2
    assert results[0].result_id == results[1].result_id
    store = service.workers["clip"].pipeline.task.store
    assert store.count() == 1
