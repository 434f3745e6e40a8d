"""Infinity (``infinity-emb``), the open embedding server, as a peer on the same CLIP.

The server runs from its own virtual environment (its pins clash with ours: transformers
< 5; ``make bench-peers`` builds it), started and stopped here on 127.0.0.1 with the very
checkpoint the consumers load, ``random:vit-b-32``: the folder imagestream built and
saved with ``save_pretrained``, copied with two tokenizer fields changed for
transformers 4.x (``checkpoint``); weights and image processor are untouched. Clients
post the loadtest's synthetic JPEGs as data URIs to ``/embeddings`` (``"modality":
"image"``), a bounded number of requests in flight, and Infinity batches them across
requests (its dynamic batching).

Infinity's image embedding has one engine, torch (its optimum/ONNX engine covers text
embedders, rerankers and classifiers, not CLIP images): the settings here are its
``--engine torch --device cpu`` with ``--batch-size`` as given (32, the consumers' batch).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from consumers.devstack.servers import free_port
from consumers.models.presets import random_model_dir
from loadtest.synth import photo_jpeg

MODEL_NAME = "clip"
START_TIMEOUT_S = 600.0


def checkpoint(cache_dir: Path, out: Path) -> Path:
    """The random:vit-b-32 folder, copied for transformers 4.x (weights untouched)."""
    source = random_model_dir("clip", "vit-b-32", cache_dir)
    target = out / "infinity-model"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    tokenizer_config = target / "tokenizer_config.json"
    config = json.loads(tokenizer_config.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tokenizer_config.write_text(json.dumps(config, indent=2))
    # 4.x's CLIPTokenizerFast insists on a Sequence pre-tokenizer (CLIP's own format): the
    # same byte-level step, wrapped in a sequence of one, tokenizes identically.
    tokenizer_file = target / "tokenizer.json"
    tokenizer = json.loads(tokenizer_file.read_text())
    tokenizer["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [tokenizer["pre_tokenizer"]]}
    tokenizer_file.write_text(json.dumps(tokenizer))
    return target


@dataclass
class InfinityServer:
    process: subprocess.Popen[bytes]
    url: str

    @property
    def pid(self) -> int:
        return self.process.pid


@contextmanager
def infinity_server(venv: Path, model: Path, batch: int, log: Path) -> Iterator[InfinityServer]:
    port = free_port()
    command = [
        str(venv / "bin" / "infinity_emb"), "v2", "--model-id", str(model),
        "--served-model-name", MODEL_NAME, "--engine", "torch", "--device", "cpu",
        "--batch-size", str(batch), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = os.environ | {"INFINITY_ANONYMOUS_USAGE_STATS": "0", "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    server = InfinityServer(process, f"http://127.0.0.1:{port}")
    try:
        asyncio.run(_wait_ready(server, log))
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _wait_ready(server: InfinityServer, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"infinity exited {server.process.returncode}; see {log}")
            try:
                async with session.get(f"{server.url}/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(1.0)
    raise TimeoutError(f"infinity not ready after {START_TIMEOUT_S:.0f} s; see {log}")


def data_uris(count: int) -> list[str]:
    """The loadtest's synthetic 640x480 JPEGs, as the data URIs Infinity accepts."""
    return [
        "data:image/jpeg;base64," + base64.b64encode(photo_jpeg(i)).decode() for i in range(count)
    ]


async def embed(session: aiohttp.ClientSession, url: str, images: list[str]) -> list[list[float]]:
    body = {"model": MODEL_NAME, "input": images, "modality": "image"}
    async with session.post(f"{url}/embeddings", json=body) as response:
        response.raise_for_status()
        payload: dict[str, Any] = await response.json()
    return [item["embedding"] for item in payload["data"]]


async def _throughput(
    url: str, images: list[str], total: int, concurrency: int, per_request: int
) -> dict[str, Any]:
    """Images/s for ``total`` images, ``concurrency`` requests in flight."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for start in range(0, total, per_request):
        queue.put_nowait(start)
    done = 0
    timeout = aiohttp.ClientTimeout(total=600)

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while not queue.empty():
            start = queue.get_nowait()
            count = min(per_request, total - start)
            chunk = [images[(start + k) % len(images)] for k in range(count)]
            vectors = await embed(session, url, chunk)
            done += len(vectors)  # after the await: `done += len(await ...)` loses updates

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return {"images": done, "seconds": seconds, "images_per_s": done / seconds}


def throughput(
    server: InfinityServer, images: list[str], total: int, concurrency: int, per_request: int
) -> dict[str, Any]:
    return asyncio.run(_throughput(server.url, images, total, concurrency, per_request))


def vectors(server: InfinityServer, images: list[str]) -> list[list[float]]:
    async def run() -> list[list[float]]:
        async with aiohttp.ClientSession() as session:
            return await embed(session, server.url, images)

    return asyncio.run(run())
