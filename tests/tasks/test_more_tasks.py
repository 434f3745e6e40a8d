"""The seeds' other tasks end to end through Tansu, moto and milvus-lite, on random weights.

One consumer service runs them all for the module (models load once, groups join once):
dinov2, caption, labels and classify beside clip, plus text search on ``queries.v1``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY
from pydantic import BaseModel, ConfigDict

from consumers.cli import commands
from consumers.cli.main import _parser
from consumers.client.ingest import publish, result_reader, wait_for_results
from consumers.client.search import search_text
from consumers.config.settings import (
    CaptionSettings,
    ClassifySettings,
    ClipSettings,
    Dinov2Settings,
    LabelsSettings,
    S3Settings,
    Settings,
)
from consumers.devstack.launcher import running_consumers
from consumers.devstack.servers import Broker
from consumers.models import classifier_heads as heads
from consumers.models.zero_shot import shared_label_sets
from consumers.worker.service import ConsumerService
from schemas.events import ErrorCode, ImageSubmitted, Status, TaskResult
from schemas.topics import Topics
from tests.helpers import event, produce_events, sample_jpeg, upload
from tests.stack_settings import stack_settings

pytestmark = pytest.mark.integration


class _Raw(BaseModel):
    """A query as a producer might send it, unvalidated (publish() dumps models)."""

    model_config = ConfigDict(extra="allow")

    def __init__(self, doc: dict[str, str]) -> None:
        super().__init__(**doc)


TASKS = ["clip", "dinov2", "caption", "labels", "classify"]
SAMPLES = ("astronaut", "coffee", "camera", "chelsea")


@pytest.fixture(scope="module")
async def settings(
    kafka_broker: Broker, s3_server: S3Settings, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    root = tmp_path_factory.mktemp("more-tasks")
    tiny = {"model": "random:tiny", "device": "cpu", "batch_timeout_ms": 100}
    return await stack_settings(
        kafka_broker.bootstrap_servers,
        s3_server,
        root,
        root / "models",
        clip=ClipSettings(**tiny),
        dinov2=Dinov2Settings(enabled=True, **tiny),
        caption=CaptionSettings(enabled=True, max_new_tokens=6, min_size=16, **tiny),
        labels=LabelsSettings(enabled=True),  # model, device: the clip section's
        classify=ClassifySettings(enabled=True, heads_dir=root / "heads"),
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
    await upload(settings, {f"{run}/{i}.jpg": sample_jpeg(s) for i, s in images.items()})
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
    store = service.workers["dinov2"].pipeline.task.store
    assert store.collection == "dinov2_images"
    (row,) = store.get([f"{run}-copy"])
    assert row["image_id"] == f"{run}-copy"
    assert len(row["vector"]) == 32


async def test_an_image_gets_a_caption_stored_by_its_id_with_timings(
    settings: Settings, service: ConsumerService
) -> None:
    run = uuid.uuid4().hex[:6]
    results = await _submit(settings, {f"{run}-a": "chelsea", f"{run}-b": "rocket"}, ["caption"])

    store = service.workers["caption"].pipeline.task.store
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


async def test_labels_are_the_top_k_of_the_shared_label_set(
    settings: Settings, service: ConsumerService
) -> None:
    run = uuid.uuid4().hex[:6]
    (result,) = (await _submit(settings, {f"{run}-a": "coffee"}, ["labels"])).values()

    assert result.status is Status.OK, result.error
    assert (result.task, result.model) == ("labels", "random:tiny")
    assert result.labels is not None
    assert len(result.labels) == settings.zero_shot.top_k
    wearable = settings.zero_shot.label_sets["wearable"]
    assert {label.label for label in result.labels} <= set(wearable)
    scores = [label.score for label in result.labels]
    assert scores == sorted(scores, reverse=True)
    assert 0 < sum(scores) <= 1.0001  # zero-shot probabilities over the whole set
    assert result.timings.encode > 0
    # The labels task shares CLIP with the clip task, and its label vectors with anyone
    # asking for the same model's sets (the gateway's /v1/labels does, through rpc.py).
    labels_encoder = service.workers["labels"].pipeline.task.encoder
    clip_encoder = service.workers["clip"].pipeline.task.encoder
    assert labels_encoder.bundle.model is clip_encoder.bundle.model  # type: ignore[attr-defined]
    shared = shared_label_sets(settings.zero_shot, clip_encoder)
    assert shared is shared_label_sets(settings.zero_shot, labels_encoder)
    assert shared.get().labels == wearable


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


async def _ingest_labelled(settings: Settings, run: str) -> dict[str, str]:
    """Four photos each of a cat and a cup through the clip task; image id -> label."""
    objects = {
        f"{run}-{sample}-{i}": (label, data)
        for sample, label in (("chelsea", "cat"), ("coffee", "cup"))
        for i, data in enumerate(_variants(sample))
    }
    await upload(settings, {f"{run}/{i}.jpg": data for i, (_, data) in objects.items()})
    uri = f"s3://{settings.s3.bucket}/{run}"
    labelled = [event(i, f"{uri}/{i}.jpg", tasks=["clip"], top_k=0) for i in objects]
    await _deliver(settings, labelled, ["clip"])
    return {image_id: label for image_id, (label, _) in objects.items()}


async def test_a_trained_head_classifies_a_held_out_duplicate(
    settings: Settings,
    service: ConsumerService,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = uuid.uuid4().hex[:6]
    uri = f"s3://{settings.s3.bucket}/{run}"
    labels = await _ingest_labelled(settings, run)
    csv = tmp_path_factory.mktemp("labels") / "labels.csv"
    csv.write_text("image_id,label\n" + "".join(f"{i},{lab}\n" for i, lab in labels.items()))

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


async def test_a_text_query_returns_ranked_image_ids(
    settings: Settings, service: ConsumerService, capsys: pytest.CaptureFixture[str]
) -> None:
    run = uuid.uuid4().hex[:6]
    tenant = f"s{run}"
    images = {f"{run}-{s}": s for s in SAMPLES}
    await _submit(settings, images, ["clip"], collection=tenant, top_k=0)

    found = await search_text(settings, "a cat on a sofa", top_k=3, tenant=tenant)
    assert found is not None
    assert found.status is Status.OK, found.error
    assert (found.task, found.model, found.dim) == ("search", "random:tiny", 32)
    assert found.image_id.startswith("q-")  # the query id
    assert found.truncated is False
    assert len(found.neighbors) == 3
    assert {n.id for n in found.neighbors} <= set(images)
    scores = [n.score for n in found.neighbors]
    assert scores == sorted(scores, reverse=True)
    assert min(found.timings.encode, found.timings.search) > 0
    ok = {"task": "search", "status": "ok", "code": ""}
    assert (REGISTRY.get_sample_value("imagestream_results_total", ok) or 0) >= 1

    only = [f"{run}-coffee", f"{run}-camera"]
    long_text = " ".join(["a very long description of a photo"] * 20)  # > 32 tokens
    restricted = await search_text(settings, long_text, top_k=5, tenant=tenant, image_ids=only)
    assert restricted is not None
    assert restricted.truncated is True
    assert sorted(n.id for n in restricted.neighbors) == sorted(only)


async def test_search_from_the_cli_and_a_bad_query(
    settings: Settings, service: ConsumerService, capsys: pytest.CaptureFixture[str]
) -> None:
    run = uuid.uuid4().hex[:6]
    tenant = f"c{run}"
    images = {f"{run}-{s}": s for s in SAMPLES[:2]}
    await _submit(settings, images, ["clip"], collection=tenant, top_k=0)
    # The CLI prints the ranking; a bad query gets a typed error result, keyed by its id.
    args = _parser().parse_args(["search", "a cup", "--tenant", tenant, "--top-k", "2"])
    assert await asyncio.to_thread(commands.search_command, settings, args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["1", "2"]
    assert all(line.split()[2] in images for line in lines)
    bad = {"event_id": f"bad-{run}", "query_id": f"q-bad-{run}", "text": "  "}
    async with result_reader(settings) as reader:
        queries = Topics(settings.kafka.topic_prefix).queries
        await publish(settings, queries, [(bad["query_id"], _Raw(bad))])
        (error,) = await wait_for_results(reader, {bad["event_id"]: {"search"}}, 60, print)
    assert error.status is Status.ERROR
    assert error.error is not None
    assert (error.error.code, error.image_id) == (ErrorCode.INVALID_EVENT, bad["query_id"])
    assert "text" in error.error.message
