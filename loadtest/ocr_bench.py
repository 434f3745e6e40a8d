"""``imagestream bench ocr``: images/s of the ocr task, bare and through the embedded stack.

The images are the rendered signs, receipts and labels of ``consumers/devstack/text_images.py``
and skimage's scanned ``page()``, repeated to ``--images``. Bare: the OCR encoder
(``consumers/models/tesseract.py``) reads them in micro-batches of ``ocr.max_records`` on its
worker pool, for each worker count asked. Stack: the same images uploaded to the embedded
S3 server and read by an ``ocr`` consumer through Tansu, milvus-lite storing the text,
from the first publish to the last result (default worker count).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from time import perf_counter
from typing import Any

from PIL import Image

from consumers.config.settings import Settings


def bench_images(count: int) -> list[Image.Image]:
    import numpy as np
    import skimage.data

    from consumers.devstack.text_images import samples

    kinds = [s.image for s in samples()]
    page = np.asarray(skimage.data.page())  # type: ignore[no-untyped-call]
    kinds.append(Image.fromarray(page).convert("RGB"))
    return [kinds[i % len(kinds)] for i in range(count)]


def bare(settings: Settings, images: list[Image.Image], workers: int) -> dict[str, Any]:
    from consumers.models.tesseract import OcrEncoder, page_of

    options = settings.ocr.model_copy(update={"workers": workers})
    reader = OcrEncoder(options, settings)
    reader.load()
    pages = [page_of(image) for image in images]
    batch = options.max_records
    cpu, started = _cpu_seconds(), perf_counter()
    for i in range(0, len(pages), batch):
        reader.read(pages[i : i + batch])
    seconds, cpu = perf_counter() - started, _cpu_seconds() - cpu
    return {
        "workers": reader.workers,
        "images": len(pages),
        "images_per_s": len(pages) / seconds,
        # CPU time per image (the tesseract processes' and this one's): what a shared
        # machine's load does not change; cores / this bounds an idle machine's rate.
        "cpu_s_per_image": cpu / len(pages),
    }


def _cpu_seconds() -> float:
    import resource

    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def through_stack(settings: Settings, images: list[Image.Image]) -> dict[str, Any]:
    from consumers.client.ingest import ingest, uploads_for
    from consumers.devstack.launcher import embedded_stack, running_consumers

    with tempfile.TemporaryDirectory(prefix="imagestream-ocr-bench-") as tmp:
        root = Path(tmp)
        folder = root / "images"
        folder.mkdir()
        for n, image in enumerate(images):
            image.save(folder / f"img-{n:04d}.png")
        uploads = uploads_for([folder])
        async with (
            embedded_stack(settings, root / "runtime") as live,
            running_consumers(live, ["ocr"]) as service,
        ):
            workers = service.workers["ocr"].pipeline.task.encoder.workers  # type: ignore[attr-defined]
            started = perf_counter()
            results = await ingest(live, uploads, tasks=["ocr"], top_k=0, timeout_s=600)
            seconds = perf_counter() - started
    ok = sum(r.status.value == "ok" for r in results)
    return {"workers": workers, "images": len(uploads), "ok": ok, "images_per_s": ok / seconds}


def run(count: int, worker_counts: list[int], stack: bool, out: Path) -> dict[str, Any]:
    settings = Settings()
    images = bench_images(count)
    report: dict[str, Any] = {"bare": [bare(settings, images, w) for w in worker_counts]}
    for row in report["bare"]:
        rate, cpu = row["images_per_s"], row["cpu_s_per_image"]
        print(f"bare   workers={row['workers']}  {rate:.1f} images/s  {cpu:.3f} CPU s/image")
    if stack:
        report["stack"] = asyncio.run(through_stack(settings, images))
        row = report["stack"]
        print(f"stack  workers={row['workers']}  {row['images_per_s']:.1f} images/s", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report
