"""The legacy baseline: seed 000's CLIP worker loop against an emulated legacy backend.

The loop is the seed's, step for step: poll ``GET {POLLING_URL}/{MODEL_NAME}`` (retry
every 2 s while empty), download ``s3_path`` over HTTP to a file in 8 KiB chunks, open
it with PIL, one CLIP forward for one image (the seed runs the full model with the text
``"three"``, so the text tower runs too), add the vector to the store (Milvus here,
ChromaDB then), query the top 20, ``GET img_callback_url`` with ``{"result": [[ids]]}``,
then sleep 5 s. The backend is a small HTTP server on 127.0.0.1 holding a job queue and
recording callbacks; it serves a job per poll, so the loop never waits for work.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.request
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from consumers.encoders.clip import ClipEncoder
from consumers.stack import HOST
from consumers.store import VectorRow, VectorStore
from loadtest.consumer import self_cpu_seconds
from loadtest.stats import percentiles

MODEL_NAME = "clip"
N_RESULTS = 20
POLL_RETRY_S = 2.0


class LegacyBackend:
    """``GET /{model}`` pops a job (``{}`` when none); ``GET /callback/{id}`` records its body."""

    def __init__(self, jobs: Sequence[tuple[str, str]]) -> None:
        self.jobs: queue.Queue[tuple[str, str]] = queue.Queue()
        for job in jobs:
            self.jobs.put(job)
        self.callbacks: dict[str, Any] = {}
        backend = self

        class Handler(BaseHTTPRequestHandler):
            handler_backend: ClassVar[LegacyBackend] = backend

            def do_GET(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer = self.handler_backend.answer(self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                """One line per poll would flood the output."""

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        threading.Thread(target=self.server.serve_forever, name="legacy", daemon=True).start()

    @property
    def polling_url(self) -> str:
        return f"http://{HOST}:{self.server.server_port}"

    def answer(self, path: str, body: bytes) -> dict[str, Any]:
        if path.startswith("/callback/"):
            self.callbacks[path.removeprefix("/callback/")] = json.loads(body or b"null")
            return {}
        try:
            job_id, url = self.jobs.get_nowait()
        except queue.Empty:
            return {}
        callback = f"{self.polling_url}/callback/{job_id}"
        return {"id": job_id, "s3_path": url, "img_callback_url": callback}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _get_json(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def _get_non_empty(url: str) -> dict[str, Any]:
    while True:
        answer = _get_json(url)
        if answer:
            return dict(answer)
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
    _get_json(job["img_callback_url"], {"result": [[key for key, _ in hits[0]]]})


def run_loop(
    encoder: ClipEncoder,
    store: VectorStore,
    backend: LegacyBackend,
    iterations: int,
    sleep_s: float,
    workdir: Path,
) -> dict[str, Any]:
    """``iterations`` (at least one) turns of the loop; images/s over the whole time,
    sleeps included."""
    work: list[float] = []
    started, cpu = time.perf_counter(), self_cpu_seconds()
    for _ in range(iterations):
        start = time.perf_counter()
        one_job(encoder, store, backend.polling_url, workdir)
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


def legacy_baseline(
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
    total = 1 + iterations + sleep_iterations
    jobs = [(f"legacy-{i:06d}", urls[i % len(urls)]) for i in range(total)]
    backend = LegacyBackend(jobs)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        run_loop(encoder, store, backend, 1, 0.0, workdir)
        no_sleep = run_loop(encoder, store, backend, iterations, 0.0, workdir)
        with_sleep = (
            run_loop(encoder, store, backend, sleep_iterations, sleep_s, workdir)
            if sleep_iterations
            else None
        )
    finally:
        backend.close()
    return {
        "no_sleep": no_sleep,
        "with_sleep": with_sleep,
        "callbacks": len(backend.callbacks),
        "polling_url_shape": "GET {POLLING_URL}/clip -> {id, s3_path, img_callback_url}",
    }
