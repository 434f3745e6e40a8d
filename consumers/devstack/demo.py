"""``make run``: the embedded stack end to end on scikit-image's bundled sample photos."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from consumers.client.console import print_result
from consumers.client.ingest import ingest, uploads_for
from consumers.client.search import search_text
from consumers.config.settings import Settings
from consumers.devstack.launcher import embedded_stack, running_consumers
from consumers.devstack.text_images import samples
from schemas.events import TaskResult

# Beyond the embedded stack's tasks (launcher.DEV_TASKS): DINOv2 costs about what CLIP
# does, shown here but left out of `imagestream up` (captions: off, see docs/tasks.md).
DEMO_TASKS = ("dinov2",)
SAMPLES = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "hubble_deep_field")
# Found by the words printed on the rendered sign (consumers/devstack/text_images.py), in hybrid
# mode.
SIGN_QUERY = "hedgehog crossing"


def write_samples(folder: Path) -> list[Path]:
    """The samples as JPEGs, plus the astronaut again under a new id: it must find itself."""
    import skimage.data

    paths = []
    for name in SAMPLES:
        pixels = np.asarray(getattr(skimage.data, name)())
        path = folder / f"{name}.jpg"
        Image.fromarray(pixels).convert("RGB").save(path, quality=90)
        paths.append(path)
    copy = folder / "astronaut-copy.jpg"
    copy.write_bytes(paths[0].read_bytes())
    return [*paths, copy, *write_text_samples(folder)]


def write_text_samples(folder: Path) -> list[Path]:
    """Rendered signs, receipts and labels as PNGs, and skimage's scanned page."""
    import skimage.data

    paths = []
    for sample in samples():
        paths.append(folder / f"{sample.name}.png")
        sample.image.save(paths[-1])
    paths.append(folder / "page.png")
    Image.fromarray(skimage.data.page()).save(paths[-1])  # type: ignore[no-untyped-call]
    return paths


async def demo(settings: Settings) -> list[TaskResult]:
    for task in DEMO_TASKS:  # an explicit IMAGESTREAM_<TASK>__ENABLED still wins
        os.environ.setdefault(f"IMAGESTREAM_{task.upper()}__ENABLED", "true")
    with tempfile.TemporaryDirectory(prefix="imagestream-demo-") as tmp:
        root = Path(tmp)
        uploads = uploads_for(write_samples(root))
        async with (
            embedded_stack(settings, root / "runtime") as live,
            running_consumers(live) as service,
        ):
            print(f"demo: {len(uploads)} images -> {service.topics.images}", flush=True)
            results = await ingest(
                live, uploads, tasks=service.tasks, top_k=3, on_result=print_result
            )
            if service.search is not None:
                found = await search_text(live, SIGN_QUERY, top_k=3, mode="hybrid")
                if found is not None:
                    print(f"demo: hybrid search {SIGN_QUERY!r}:", flush=True)
                    print_result(found)
                    results.append(found)
            return results
