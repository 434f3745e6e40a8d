"""The face task end to end through the real Tansu broker, moto S3 server and milvus-lite."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consumers.client.ingest import result_reader
from consumers.config.settings import FaceSettings, S3Settings, Settings
from consumers.devstack.launcher import running_consumers
from consumers.devstack.servers import Broker
from consumers.worker.service import ConsumerService
from schemas.events import ErrorCode, Status, TaskResult
from tests.face_support import face_model_cache, two_face_photo
from tests.helpers import collect, event, jpeg, produce_events, sample_jpeg, upload
from tests.stack_settings import stack_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return face_model_cache(tmp_path_factory)


@pytest.fixture
async def settings(
    kafka_broker: Broker, s3_server: S3Settings, tmp_path: Path, model_cache: Path
) -> Settings:
    return await stack_settings(
        kafka_broker.bootstrap_servers,
        s3_server,
        tmp_path,
        model_cache,
        # The production path for dlib's real weights: a DeepFace model name, its file
        # found in the face-recognition-models wheel.
        face=FaceSettings(model="Dlib", device="cpu", max_records=16),
    )


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[ConsumerService]:
    async with running_consumers(settings, ["face"]) as running:
        yield running


async def test_every_face_stored_and_the_same_face_found_in_the_other_photo(
    settings: Settings, service: ConsumerService
) -> None:
    run = uuid.uuid4().hex[:6]
    objects = {
        f"{run}/astronaut.jpg": sample_jpeg("astronaut"),
        f"{run}/pair.jpg": jpeg(two_face_photo()),
        f"{run}/coffee.jpg": sample_jpeg("coffee"),
        f"{run}/page.jpg": b"<html>not an image</html>",
    }
    await upload(settings, objects)
    uri = f"s3://{settings.s3.bucket}/{run}"
    first = [
        event("astro-1", f"{uri}/astronaut.jpg"),
        event("pair", f"{uri}/pair.jpg"),
        event("coffee", f"{uri}/coffee.jpg"),
        event("page", f"{uri}/page.jpg"),
    ]
    async with result_reader(settings) as reader:
        await produce_events(settings, first)
        by_image = {r.image_id: r for r in await collect(reader, len(first), timeout_s=120)}
        await produce_events(settings, [event("astro-2", f"{uri}/astronaut.jpg", top_k=5)])
        (again,) = await collect(reader, 1, timeout_s=60)

    assert set(by_image) == {"astro-1", "pair", "coffee", "page"}
    pair = _ok(by_image["pair"])
    assert [f.face_id for f in pair.faces or []] == ["pair#0", "pair#1"]
    for face in pair.faces or []:
        x, y, w, h = face.bbox
        assert min(w, h) > 20
        assert x + w <= 2 * 210 + 3 * 20
        assert y + h <= 210 + 2 * 20
        assert all(n.image_id != "pair" for n in face.neighbors)  # other photos only
    assert _ok(by_image["coffee"]).faces == []
    page = by_image["page"]
    assert page.status is Status.ERROR
    assert page.error is not None
    assert page.error.code is ErrorCode.NOT_AN_IMAGE

    assert again.image_id == "astro-2"
    face = _ok(again).faces[0]  # type: ignore[index]
    assert face.face_id == "astro-2#0"
    nearest = face.neighbors[0]
    assert (nearest.id, nearest.image_id) == ("astro-1#0", "astro-1")
    assert nearest.score == pytest.approx(1.0, abs=1e-4)
    # Real weights: the astronaut's face in the pair photo is her, the cameraman is not.
    cameraman, astronaut = sorted(n.score for n in face.neighbors if n.image_id == "pair")
    assert cameraman < 0.93 <= astronaut < 0.999
    assert not any(n.image_id == "astro-2" for n in face.neighbors)
    assert service.workers["face"].pipeline.task.store.count() == 4  # 1 + 2 + 0 + 1 faces


def _ok(result: TaskResult) -> TaskResult:
    assert result.status is Status.OK, result.error
    assert (result.task, result.model, result.dim) == ("face", "Dlib", 128)
    assert result.faces is not None
    t = result.timings
    assert min(t.fetch, t.decode, t.total) > 0
    return result
