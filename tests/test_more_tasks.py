"""The seeds' other tasks end to end through Tansu, moto and milvus-lite, on random weights.

One consumer service runs them all for the module (models load once, groups join once):
dinov2, caption, labels and classify beside clip, plus text search on ``queries.v1``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from consumers import commands, heads
from consumers.cli import _parser
from consumers.ingest import result_reader, wait_for_results
from consumers.launcher import running_consumers
from consumers.s3 import S3Store
from consumers.service import ConsumerService
from consumers.settings import (
    CaptionSettings,
    ClassifySettings,
    ClipSettings,
    Dinov2Settings,
    KafkaSettings,
    MetricsSettings,
    MilvusSettings,
    S3Settings,
    Settings,
)
from consumers.stack import Broker, create_topics
from schemas.events import ImageSubmitted, Status, TaskResult
from schemas.topics import Topics
from tests.helpers import event, produce_events, sample_jpeg

pytestmark = pytest.mark.integration
TASKS = ["clip", "dinov2", "caption", "classify"]
SAMPLES = ("astronaut", "coffee", "camera", "chelsea")


@pytest.fixture(scope="module")
async def settings(
    kafka_broker: Broker, s3_server: S3Settings, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    await create_topics(kafka_broker.bootstrap_servers, Topics(prefix).all(), partitions=2)
    root = tmp_path_factory.mktemp("more-tasks")
    tiny = {"model": "random:tiny", "device": "cpu", "batch_timeout_ms": 100}
    return Settings(
        _env_file=None,
        kafka=KafkaSettings(
            bootstrap_servers=kafka_broker.bootstrap_servers,
            topic_prefix=prefix,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        ),
        s3=s3_server,
        milvus=MilvusSettings(uri=str(root / "milvus.db")),
        metrics=MetricsSettings(port=0),
        clip=ClipSettings(**tiny),
        dinov2=Dinov2Settings(enabled=True, **tiny),
        caption=CaptionSettings(enabled=True, max_new_tokens=6, min_size=16, **tiny),
        classify=ClassifySettings(enabled=True, heads_dir=root / "heads"),
        model_cache_dir=root / "models",
    )


@pytest.fixture(scope="module")
async def service(settings: Settings) -> AsyncIterator[ConsumerService]:
    async with running_consumers(settings, TASKS) as running:
        yield running


async def _submit(
    settings: Settings, images: dict[str, str], tasks: list[str], **fields: object
) -> dict[str, TaskResult]:
    """Upload sample images under fresh keys; image id -> its result for ``tasks[0]``."""
    run = uuid.uuid4().hex[:6]
    async with S3Store(settings.s3) as s3:
        for image_id, sample in images.items():
            await s3.put(settings.s3.bucket, f"{run}/{image_id}.jpg", sample_jpeg(sample))
    uri = f"s3://{settings.s3.bucket}/{run}"
    events: list[ImageSubmitted] = [
        event(image_id, f"{uri}/{image_id}.jpg", tasks=tasks, **fields) for image_id in images
    ]
    results = await _deliver(settings, events, tasks)
    return {r.image_id: r for r in results if r.task == tasks[0]}


async def _deliver(
    settings: Settings, events: list[ImageSubmitted], tasks: list[str]
) -> list[TaskResult]:
    expected = {e.event_id: set(tasks) for e in events}
    async with result_reader(settings) as reader:
        await produce_events(settings, events)
        results = await wait_for_results(reader, expected, 120, lambda _: None)
    assert len(results) == len(events) * len(tasks)  # redeliveries are dropped by event id
    return results


async def test_dinov2_neighbours_find_an_exact_duplicate_first(
    settings: Settings, service: ConsumerService
) -> None:
    run = uuid.uuid4().hex[:6]
    first = await _submit(settings, {f"{run}-{s}": s for s in SAMPLES}, ["dinov2"])
    assert all(r.status is Status.OK for r in first.values())
    (copy,) = (await _submit(settings, {f"{run}-copy": "astronaut"}, ["dinov2"], top_k=3)).values()

    assert (copy.task, copy.model, copy.dim) == ("dinov2", "random:tiny", 32)
    assert copy.neighbors[0].id == f"{run}-astronaut"
    assert copy.neighbors[0].score == pytest.approx(1.0, abs=1e-4)
    assert all(n.score < 0.9999 for n in copy.neighbors[1:])
    assert min(copy.timings.encode, copy.timings.index, copy.timings.search) > 0
    # Its own collection, keyed by the same image id as CLIP's.
    store = service.pipelines["dinov2"].task.store
    assert store.collection == "dinov2_images"
    (row,) = store.get([f"{run}-copy"])
    assert row["image_id"] == f"{run}-copy"
    assert len(row["vector"]) == 32


async def test_an_image_gets_a_caption_stored_by_its_id_with_timings(
    settings: Settings, service: ConsumerService
) -> None:
    run = uuid.uuid4().hex[:6]
    results = await _submit(settings, {f"{run}-a": "chelsea", f"{run}-b": "rocket"}, ["caption"])

    store = service.pipelines["caption"].task.store
    assert store.collection == "captions"
    for image_id, result in results.items():
        assert result.status is Status.OK, result.error
        assert (result.task, result.model, result.dim) == ("caption", "random:tiny", 32)
        # Random weights say nothing sensible, but they say something, within the limit.
        assert isinstance(result.caption, str)
        assert result.caption.strip()
        assert not result.neighbors
        t = result.timings
        assert min(t.fetch, t.decode, t.encode, t.index) > 0
        assert t.total >= t.encode + t.index
        (row,) = store.get([image_id])
        assert row["metadata"]["caption"] == result.caption
        assert len(row["vector"]) == 32


def _variants(sample: str) -> list[bytes]:
    """Four photos of one scene: the original, mirrored, cropped and darkened."""
    import io

    import numpy as np
    import skimage.data
    from PIL import Image, ImageEnhance, ImageOps

    base = Image.fromarray(np.asarray(getattr(skimage.data, sample)())).convert("RGB")
    w, h = base.size
    images = [
        base,
        ImageOps.mirror(base),
        base.crop((w // 10, h // 10, w, h)),
        ImageEnhance.Brightness(base).enhance(0.7),
    ]
    out = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


async def test_a_trained_head_classifies_a_held_out_duplicate(
    settings: Settings,
    service: ConsumerService,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = uuid.uuid4().hex[:6]
    objects = {
        f"{run}-{sample}-{i}": (label, data)
        for sample, label in (("chelsea", "cat"), ("coffee", "cup"))
        for i, data in enumerate(_variants(sample))
    }
    async with S3Store(settings.s3) as s3:
        for image_id, (_, data) in objects.items():
            await s3.put(settings.s3.bucket, f"{run}/{image_id}.jpg", data)
    uri = f"s3://{settings.s3.bucket}/{run}"
    labelled = [event(i, f"{uri}/{i}.jpg", tasks=["clip"], top_k=0) for i in objects]
    await _deliver(settings, labelled, ["clip"])
    csv = tmp_path_factory.mktemp("labels") / "labels.csv"
    csv.write_text("image_id,label\n" + "".join(f"{i},{lab}\n" for i, (lab, _) in objects.items()))

    args = _parser().parse_args(["classifier", "train", "kind", "--labels", str(csv)])
    assert commands.classifier_train(settings, args) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    (info,) = heads.list_heads(settings.classify.heads_dir)
    assert (info.name, info.method, info.classes, info.dim) == (
        "kind",
        "logreg",
        ["cat", "cup"],
        32,
    )
    assert not list(settings.classify.heads_dir.glob("*.pkl"))

    # Neither copy was labelled: each is a held-out duplicate of a labelled photo.
    copies = [
        event(f"{run}-copy-{lab}", f"{uri}/{run}-{sample}-0.jpg", tasks=["classify"])
        for sample, lab in (("chelsea", "cat"), ("coffee", "cup"))
    ]
    results = await _deliver(settings, copies, ["classify"])
    for result in results:
        assert result.status is Status.OK, result.error
        assert result.classes is not None
        (prediction,) = result.classes
        assert prediction.head == "kind"
        assert prediction.label == result.image_id.rsplit("-", 1)[1]
        assert prediction.class_id == ["cat", "cup"].index(prediction.label)
        assert 0.5 < prediction.proba <= 1.0
