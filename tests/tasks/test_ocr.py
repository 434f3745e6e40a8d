"""The ocr task and text search through Tansu, moto and milvus-lite, on Debian's real Tesseract.

One consumer service (clip on random:tiny weights, ocr, text search) reads rendered signs,
receipts and labels (``consumers/devstack/text_images.py``), skimage's ``page()``, a photo and a
blank
card, once for the module; the tests then check what was read, where it was stored and
what the text and hybrid search modes find.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from consumers.cli import commands
from consumers.cli.main import _parser, main
from consumers.client.search import search_text
from consumers.config.settings import (
    CaptionSettings,
    ClassifySettings,
    ClipSettings,
    OcrSettings,
    S3Settings,
    Settings,
)
from consumers.devstack.launcher import running_consumers
from consumers.devstack.servers import Broker
from consumers.devstack.text_images import char_accuracy, render, samples
from consumers.worker.service import ConsumerService
from schemas.events import SearchMode, Status, TaskResult
from tests.helpers import event, sample_jpeg, upload
from tests.models.test_heads import _products
from tests.tasks.test_more_tasks import _deliver

pytestmark = pytest.mark.integration
TASKS = ["clip", "ocr"]  # what the images ask for; the service also runs classify
BIG = 3  # the big sign is the small one scaled by this, past decode.max_side


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Ingested:
    run: str
    texts: dict[str, str]  # image id -> the text rendered on it
    results: dict[str, TaskResult]  # image id -> its ocr result


@pytest.fixture(scope="module")
async def settings(
    kafka_broker: Broker,
    s3_server: S3Settings,
    model_cache: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    from tests.stack_settings import stack_settings

    root = tmp_path_factory.mktemp("ocr")
    return await stack_settings(
        kafka_broker.bootstrap_servers,
        s3_server,
        root,
        model_cache,  # random:tiny CLIP, built once per test session
        clip=ClipSettings(model="random:tiny", device="cpu", batch_timeout_ms=100),
        ocr=OcrSettings(enabled=True, batch_timeout_ms=100),
        classify=ClassifySettings(enabled=True, heads_dir=root / "heads", batch_timeout_ms=100),
        caption=CaptionSettings(
            enabled=True,
            model="random:tiny-idefics3",  # a chat VLM (SmolVLM's architecture)
            device="cpu",
            max_new_tokens=12,
            min_size=16,
            batch_timeout_ms=100,
        ),
    )


@pytest.fixture(scope="module")
async def service(settings: Settings) -> AsyncIterator[ConsumerService]:
    async with running_consumers(settings, [*TASKS, "classify", "caption"]) as running:
        yield running


@pytest.fixture(scope="module")
async def ingested(settings: Settings, service: ConsumerService) -> Ingested:
    import skimage.data

    run = uuid.uuid4().hex[:6]
    made = {f"{run}-{s.name}": (png(s.image), s.text) for s in samples()}
    sign = next(s for s in samples() if s.name == "sign")
    big = sign.image.resize((sign.image.width * BIG, sign.image.height * BIG))
    made[f"{run}-sign-big"] = (png(big), sign.text)
    made[f"{run}-page"] = (png(Image.fromarray(skimage.data.page())), "")
    made[f"{run}-coffee"] = (sample_jpeg("coffee"), "")
    made[f"{run}-blank"] = (png(Image.new("RGB", (320, 200), (240, 240, 240))), "")
    await upload(settings, {f"{run}/{i}": data for i, (data, _) in made.items()})
    uri = f"s3://{settings.s3.bucket}/{run}"
    events = [event(i, f"{uri}/{i}", tasks=TASKS, top_k=3) for i in made]
    results = await _deliver(settings, events, TASKS)
    ocr = {r.image_id: r for r in results if r.task == "ocr"}
    return Ingested(run, {i: text for i, (_, text) in made.items()}, ocr)


async def test_rendered_text_is_read_with_boxes_in_source_pixels(ingested: Ingested) -> None:
    for image_id, expected in ingested.texts.items():
        result = ingested.results[image_id]
        assert result.status is Status.OK, result.error
        assert result.ocr is not None
        assert result.ocr.language == "eng"
        assert result.model is not None
        assert result.model.startswith("tesseract-5")
        if expected:
            accuracy = char_accuracy(expected, result.ocr.text)
            assert accuracy >= 0.9, (image_id, result.ocr.text)
    run = ingested.run
    small, big = (ingested.results[f"{run}-{n}"].ocr for n in ("sign", "sign-big"))
    assert small is not None
    assert big is not None
    # Decoded at 1024 px wide, read there, boxes mapped back to the 2637 px source.
    for line, big_line in zip(small.lines, big.lines, strict=True):
        assert line.text == big_line.text
        for a, b in zip(line.bbox, big_line.bbox, strict=True):
            assert b == pytest.approx(a * BIG, abs=0.04 * BIG * max(line.bbox[2:]))
        assert 0.5 < line.confidence <= 1
        assert [w.text for w in line.words] == line.text.split()
    page = ingested.results[f"{run}-page"].ocr
    assert page is not None
    assert "markers" in page.text


async def test_an_image_without_text_is_ok_with_empty_text_and_a_row(
    ingested: Ingested, service: ConsumerService
) -> None:
    blank = ingested.results[f"{ingested.run}-blank"]
    assert blank.status is Status.OK
    assert blank.ocr is not None
    assert blank.ocr.text == ""
    assert blank.ocr.lines == []
    store = service.workers["ocr"].pipeline.task.texts
    assert store.collection == "ocr_texts"
    sign_id = f"{ingested.run}-sign"
    row, empty = store.get([sign_id, blank.image_id])
    assert row["text"] == ingested.results[sign_id].ocr.text  # type: ignore[union-attr]
    assert row["detail"]["lines"][0]["text"] == "HEDGEHOG CROSSING"
    assert empty["text"] == ""


async def _search(
    settings: Settings,
    text: str,
    mode: SearchMode,
    top_k: int = 5,
    tenant: str | None = None,
    image_ids: list[str] | None = None,
) -> TaskResult:
    result = await search_text(
        settings, text, mode=mode, top_k=top_k, tenant=tenant, image_ids=image_ids
    )
    assert result is not None
    assert result.status is Status.OK, result.error
    return result


@pytest.mark.parametrize("mode", ["text", "hybrid"])
async def test_a_printed_word_finds_its_image_first(
    settings: Settings, ingested: Ingested, mode: SearchMode
) -> None:
    run = ingested.run
    result = await _search(settings, "hedgehog", mode, top_k=20)
    first = result.neighbors[0]
    assert first.id in {f"{run}-sign", f"{run}-sign-big"}
    assert first.lists is not None
    assert "ocr" in first.lists
    if mode == "text":
        # BM25 lists only what shares a word: both signs, nothing else of this run.
        assert {n.id for n in result.neighbors if n.id.startswith(run)} == {
            f"{run}-sign",
            f"{run}-sign-big",
        }
        assert result.model == "bm25"
    else:
        assert "clip" in first.lists
        assert any(n.lists == ["clip"] for n in result.neighbors)  # CLIP ranks every image
    honey = await _search(settings, "lavender honey", mode, top_k=3)
    assert honey.neighbors[0].id == f"{run}-label"


async def test_text_search_keeps_tenant_and_id_filters(
    settings: Settings, ingested: Ingested
) -> None:
    run = ingested.run
    only = [f"{run}-receipt", f"{run}-label"]
    found = await _search(settings, "hedgehog grocery", "text", image_ids=only)
    assert [n.id for n in found.neighbors] == [f"{run}-receipt"]
    elsewhere = await _search(settings, "hedgehog", "hybrid", tenant=f"nobody-{run}")
    assert elsewhere.neighbors == []


async def test_the_cli_searches_in_a_mode_and_names_the_lists(
    settings: Settings, ingested: Ingested, capsys: pytest.CaptureFixture[str]
) -> None:
    run = ingested.run
    args = _parser().parse_args(
        ["search", "corner grocery", "--mode", "text", "--image-ids", f"{run}-receipt"]
    )
    assert await asyncio.to_thread(commands.search_command, settings, args) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.split()[0::2] == ["1", f"{run}-receipt"]
    assert line.endswith("(ocr)")


async def test_chat_captions_are_found_by_their_words(
    settings: Settings, service: ConsumerService, ingested: Ingested
) -> None:
    run = ingested.run
    asked = [f"{run}-sign", f"{run}-coffee"]
    uri = f"s3://{settings.s3.bucket}/{run}"
    events = [event(i, f"{uri}/{i}", tasks=["caption"]) for i in asked]
    results = {r.image_id: r for r in await _deliver(settings, events, ["caption"])}
    captions = {i: results[i].caption or "" for i in asked}
    assert all(results[i].status is Status.OK for i in asked)
    assert results[asked[0]].model == "random:tiny-idefics3"
    # Random weights say nothing true, but what they say is stored and searchable by word.
    stored = service.workers["caption"].pipeline.task.texts.get(asked)
    assert [row["text"] for row in stored] == [captions[i] for i in asked]
    for image_id, caption in captions.items():
        if not any(ch.isalnum() for ch in caption):
            continue  # nothing for an analyser to index
        found = await _search(settings, caption, "text", image_ids=asked)
        assert found.neighbors[0].id == image_id, captions
        assert found.neighbors[0].lists is not None
        assert "caption" in found.neighbors[0].lists


async def test_a_head_on_clip_and_ocr_classifies_by_the_printed_word(
    settings: Settings,
    service: ConsumerService,
    ingested: Ingested,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = uuid.uuid4().hex[:6]
    labels, images = _products(4)
    objects = {f"{run}-p{n}": png(image) for n, image in enumerate(images)}
    held = {f"{run}-stored": "Fresh Honey Pack", f"{run}-unread": "Premium Coffee Daily"}
    objects |= {i: png(render([text], "DejaVuSans", 30)) for i, text in held.items()}
    await upload(settings, {f"{run}/{i}": data for i, data in objects.items()})
    uri = f"s3://{settings.s3.bucket}/{run}"
    read = [i for i in objects if i != f"{run}-unread"]  # one image the ocr task never sees
    await _deliver(settings, [event(i, f"{uri}/{i}", tasks=TASKS, top_k=0) for i in read], TASKS)
    csv = tmp_path_factory.mktemp("labels") / "labels.csv"
    csv.write_text("".join(f"{run}-p{n},{label}\n" for n, label in enumerate(labels)))

    train = ["classifier", "train", "product", "--labels", str(csv), "--features", "clip,ocr"]
    assert commands.classifier_train(settings, _parser().parse_args(train)) == 0
    assert "logreg on clip+ocr over 2 classes" in capsys.readouterr().out

    asked = [event(i, f"{uri}/{i}", tasks=["classify"]) for i in held]
    results = {r.image_id: r for r in await _deliver(settings, asked, ["classify"])}
    for image_id, want in ((f"{run}-stored", "honey"), (f"{run}-unread", "coffee")):
        result = results[image_id]
        assert result.status is Status.OK, result.error
        assert result.classes is not None
        assert [(c.head, c.label) for c in result.classes] == [("product", want)]
    # The unread image's text was read by classify itself, and not stored by it.
    store = service.workers["ocr"].pipeline.task.texts
    assert [row["image_id"] for row in store.get(list(held))] == [f"{run}-stored"]


def test_a_missing_tesseract_fails_at_start_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("IMAGESTREAM_METRICS__PORT", "0")
    monkeypatch.setenv("IMAGESTREAM_MILVUS__URI", f"{tmp_path}/milvus.db")
    assert main(["consume", "--tasks", "ocr"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "tesseract" in err
    assert "apt-get install tesseract-ocr" in err


def test_an_unknown_language_pack_fails_with_what_to_install() -> None:
    from consumers.models.tesseract import OcrEncoder
    from consumers.pipeline.item_errors import ModelLoadError

    settings = Settings(_env_file=None, ocr=OcrSettings(language="eng+xyz"))
    with pytest.raises(ModelLoadError, match="apt-get install tesseract-ocr-xyz"):
        OcrEncoder(settings.ocr, settings).load()


def test_blank_noise_reads_as_no_text() -> None:
    from consumers.models.tesseract import OcrEncoder, page_of

    settings = Settings(_env_file=None)
    encoder = OcrEncoder(settings.ocr, settings)
    encoder.load()
    smooth = np.full((120, 200, 3), 200, dtype=np.uint8)
    (read,) = encoder.read([page_of(Image.fromarray(smooth))])
    assert read.text == ""
    assert read.lines == []
