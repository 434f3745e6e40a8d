"""The legacy baseline: seed 000's CLIP worker loop against an emulated legacy backend.

The loop is the seed's, step for step: poll ``GET {POLLING_URL}/{MODEL_NAME}`` (retry
every 2 s while empty), download ``s3_path`` over HTTP to a file in 8 KiB chunks, open
it with PIL, one CLIP forward for one image (the seed runs the full model with the text
``"three"``, so the text tower runs too), add the vector to the store (Milvus here,
ChromaDB then), query the top 20, ``GET img_callback_url`` with ``{"result": [[ids]]}``,
then sleep 5 s. The backend is the project's legacy backend emulator
(``loadtest/legacy_backend.py``) on 127.0.0.1, loaded with every job up front, so the
loop never waits for work. The loop runs in a worker thread; the emulator answers it
from the event loop.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from consumers.models.clip import ClipEncoder
from consumers.vectorstore.store import VectorRow, VectorStore
from loadtest.consumer import self_cpu_seconds
from loadtest.legacy_backend import LegacyBackend
from loadtest.stats import percentiles

MODEL_NAME = "clip"
N_RESULTS = 20
POLL_RETRY_S = 2.0


def _get(url: str, body: Any = None) -> bytes:
    """``GET`` (with a JSON body for callbacks, as the seed's ``requests.get(url, json=...)``)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return bytes(response.read())


def _get_non_empty(url: str) -> dict[str, Any]:
    while True:
        answer = _get(url)
        if answer.strip():
            return dict(json.loads(answer))
        time.sleep(POLL_RETRY_S)


def _download(url: str, path: Path) -> Path:
    with urllib.request.urlopen(url, timeout=30) as response, path.open("wb") as out:
        while chunk := response.read(8192):
            out.write(chunk)
    return path


def _embed(encoder: ClipEncoder, path: Path) -> np.ndarray:
    bundle = encoder.bundle
    image = Image.open(path).convert("RGB")
    with torch.inference_mode():
        pixels = bundle.processor(images=image, return_tensors="pt")["pixel_values"]
        tokens = bundle.tokenizer(["three"], return_tensors="pt", padding=True)
        output = bundle.model(
            input_ids=tokens["input_ids"].to(encoder.device),
            attention_mask=tokens["attention_mask"].to(encoder.device),
            pixel_values=pixels.to(encoder.device, encoder.dtype),
        )
        vector = output.image_embeds.float()
        vector = vector / vector.norm(dim=-1, keepdim=True)
    return np.asarray(vector.squeeze(0).cpu().numpy(), dtype=np.float32)


def one_job(encoder: ClipEncoder, store: VectorStore, polling_url: str, workdir: Path) -> None:
    job = _get_non_empty(f"{polling_url}/{MODEL_NAME}")
    path = _download(job["s3_path"], workdir / "image.jpg")
    vector = _embed(encoder, path)
    job_id = str(job["id"])
    store.upsert([VectorRow(id=job_id, image_id=job_id, uri=job["s3_path"], vector=vector)])
    hits = store.search(vector[None, :], N_RESULTS)
    _get(job["img_callback_url"], {"result": [[key for key, _ in hits[0]]]})


def run_loop(
    encoder: ClipEncoder,
    store: VectorStore,
    polling_url: str,
    workdir: Path,
    iterations: int,
    sleep_s: float,
) -> dict[str, Any]:
    """``iterations`` (at least one) turns of the loop; images/s over the whole time,
    sleeps included."""
    workdir.mkdir(parents=True, exist_ok=True)
    work: list[float] = []
    started, cpu = time.perf_counter(), self_cpu_seconds()
    for _ in range(iterations):
        start = time.perf_counter()
        one_job(encoder, store, polling_url, workdir)
        work.append(time.perf_counter() - start)
        time.sleep(sleep_s)
    elapsed, cpu = time.perf_counter() - started, self_cpu_seconds() - cpu
    mean_work = sum(work) / len(work)
    return {
        "iterations": iterations,
        "sleep_s": sleep_s,
        "images_per_s": iterations / elapsed,
        "images_per_cpu_s": iterations / cpu if cpu > 0 else None,
        "work_ms": percentiles(w * 1000 for w in work),
        "formula": "images/s = 1 / (mean work per image + sleep)",
        "formula_images_per_s": 1 / (mean_work + sleep_s),
    }


async def legacy_baseline(
    encoder: ClipEncoder,
    store: VectorStore,
    urls: Sequence[str],
    *,
    iterations: int,
    sleep_iterations: int,
    sleep_s: float,
    workdir: Path,
) -> dict[str, Any]:
    """One untimed warm-up job, then the loop without its sleep, then with it."""
    backend = await LegacyBackend().start()
    try:
        for i in range(1 + iterations + sleep_iterations):
            backend.add_job(MODEL_NAME, f"legacy-{i:06d}", urls[i % len(urls)])
        loop = partial(run_loop, encoder, store, backend.url, workdir)
        await asyncio.to_thread(loop, 1, 0.0)
        no_sleep = await asyncio.to_thread(loop, iterations, 0.0)
        with_sleep = (
            await asyncio.to_thread(loop, sleep_iterations, sleep_s) if sleep_iterations else None
        )
    finally:
        await backend.stop()
    return {
        "no_sleep": no_sleep,
        "with_sleep": with_sleep,
        "callbacks": len(backend.callbacks),
        "polling_url_shape": "GET {POLLING_URL}/clip -> {id, s3_path, img_callback_url}",
    }
