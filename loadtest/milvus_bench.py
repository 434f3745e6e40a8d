"""``imagestream bench milvus``: upsert and batched search through ``VectorStore``.

For each backend (milvus-lite, a Milvus standalone server from the ``milvus`` package),
index type and size: fill an empty collection with random unit vectors in upserts of
one consumer batch (32 rows), timing searches issued from a second thread meanwhile;
then, once the data is flushed and indexed, time batched searches (32 queries, top 20,
as one consumer batch asks) and the consumer's per-batch store step (upsert 32 rows,
then search them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pymilvus import MilvusClient

from consumers.config.settings import MilvusSettings
from consumers.vectorstore.store import VectorRow, VectorStore
from loadtest.milvus_server import milvus_server
from loadtest.stats import percentiles

BATCH = 32
TOP_K = 20
SEARCH_ROUNDS = 20
STEP_ROUNDS = 10
_WRITING_SEARCH_PAUSE_S = 0.2


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: np.ndarray = vectors / norms
    return unit


def _rows(vectors: np.ndarray, first: int) -> list[VectorRow]:
    ids = [f"img-{first + i:08d}" for i in range(len(vectors))]
    return [
        VectorRow(id=k, image_id=k, uri="s3://b/k", vector=v)
        for k, v in zip(ids, vectors, strict=True)
    ]


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def _upsert_range(
    store: VectorStore, first: int, last: int, dim: int, rng: np.random.Generator
) -> float:
    """Upsert rows ``first..last-1``, ``BATCH`` per call; rows/s."""
    start = time.perf_counter()
    for offset in range(first, last, BATCH):
        store.upsert(_rows(unit_vectors(rng, min(BATCH, last - offset), dim), offset))
    return (last - first) / (time.perf_counter() - start)


def fill(store: VectorStore, size: int, dim: int, rng: np.random.Generator) -> dict[str, Any]:
    """Upsert ``size`` rows, ``BATCH`` per call: all but the last tenth alone (rows/s),
    the last tenth while another thread searches (search latency under writes)."""
    tail = max(BATCH, size // 10)
    alone = _upsert_range(store, 0, size - tail, dim, rng)
    queries = unit_vectors(rng, BATCH, dim)
    done, during = threading.Event(), []

    def searcher() -> None:
        while not done.is_set():
            during.append(_timed(lambda: store.search(queries, TOP_K)))
            done.wait(_WRITING_SEARCH_PAUSE_S)

    thread = threading.Thread(target=searcher, daemon=True)
    thread.start()
    contended = _upsert_range(store, size - tail, size, dim, rng)
    done.set()
    thread.join()
    return {
        "rows_per_s": alone,
        "rows_per_s_while_searching": contended,
        "search_while_writing_ms": percentiles(during),
    }


def settle(uri: str, collection: str, timeout_s: float = 600.0) -> float:
    """Flush, then wait until the index covers every row; seconds it took."""
    start = time.perf_counter()
    client = MilvusClient(uri=uri)
    try:
        client.flush(collection)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = client.describe_index(collection, "vector")
            if not int(info.get("pending_index_rows", 0) or 0):
                break
            time.sleep(0.5)
    finally:
        client.close()
    return time.perf_counter() - start


def searches(store: VectorStore, dim: int, rng: np.random.Generator) -> dict[str, Any]:
    batched = [
        _timed(lambda: store.search(unit_vectors(rng, BATCH, dim), TOP_K))
        for _ in range(SEARCH_ROUNDS)
    ]
    single = [
        _timed(lambda: store.search(unit_vectors(rng, 1, dim), TOP_K)) for _ in range(SEARCH_ROUNDS)
    ]
    return {"batched_32_ms": percentiles(batched), "single_ms": percentiles(single)}


def consumer_steps(
    store: VectorStore, size: int, dim: int, rng: np.random.Generator
) -> dict[str, Any]:
    """What one consumer batch costs the store thread: upsert 32 new rows, search them."""
    times = []
    for step in range(STEP_ROUNDS):
        vectors = unit_vectors(rng, BATCH, dim)
        rows = _rows(vectors, size + step * BATCH)
        start = time.perf_counter()
        store.upsert(rows)
        store.search(vectors, TOP_K, exclude_ids=[row.id for row in rows])
        times.append((time.perf_counter() - start) * 1000)
    return percentiles(times)


def one_case(uri: str, index: str, size: int, dim: int) -> dict[str, Any]:
    rng = np.random.default_rng(size)
    collection = f"bench_{index.lower()}_{size}"
    with VectorStore(MilvusSettings(uri=uri, index_type=index), collection, dim) as store:
        case: dict[str, Any] = {"size": size, "dim": dim, "index": index}
        case["fill"] = fill(store, size, dim, rng)
        case["settle_s"] = settle(uri, collection)
        case |= searches(store, dim, rng)
        case["consumer_step_ms"] = consumer_steps(store, size, dim, rng)
    return case


@contextlib.contextmanager
def backend_uri(backend: str, folder: Path) -> Iterator[str]:
    if backend == "lite":
        yield str(folder / "bench.db")
    elif backend == "server":
        with milvus_server(folder / "server") as (uri, _):
            yield uri
    else:
        yield backend


def milvus_benchmark(
    backends: list[str], sizes: list[int], indexes: list[str], dim: int
) -> list[dict[str, Any]]:
    rows = []
    for backend in backends:
        with tempfile.TemporaryDirectory(prefix="imagestream-bench-") as tmp:
            started = time.perf_counter()
            with backend_uri(backend, Path(tmp)) as uri:
                startup = time.perf_counter() - started
                # milvus-lite ignores index_type (AUTOINDEX); one pass is enough there.
                for index in indexes if backend != "lite" else ["AUTOINDEX"]:
                    for size in sizes:
                        case = one_case(uri, index, size, dim)
                        rows.append({"backend": backend, "startup_s": startup} | case)
                        print(_line(rows[-1]), flush=True)
    return rows


def _line(row: dict[str, Any]) -> str:
    fill, batched = row["fill"], row["batched_32_ms"]
    writing = row["fill"]["search_while_writing_ms"].get("p50", float("nan"))
    return (
        f"{row['backend']:>6} {row['index']:>9} {row['size']:>7} rows: upsert "
        f"{fill['rows_per_s']:8.0f} rows/s, search 32x top{TOP_K} p50 {batched['p50']:7.1f} ms "
        f"(p95 {batched['p95']:.1f}), while writing p50 {writing:.1f} ms, consumer step p50 "
        f"{row['consumer_step_ms']['p50']:.1f} ms"
    )


def milvus_command(args: argparse.Namespace) -> int:
    rows = milvus_benchmark(args.backends, args.sizes, [i.upper() for i in args.indexes], args.dim)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0
