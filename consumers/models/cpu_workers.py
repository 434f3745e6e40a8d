"""CPU inference split over single-threaded workers, one per core, instead of one call
that spreads every op over all cores.

Why: torch's CPU kernels cut each op into equal parts, one per OpenMP thread, and wait
for the last part before the next op. Whatever else runs on the machine (the S3 client,
decode, Milvus, the broker) pre-empts one of those threads now and then, and the others
idle at the barrier until it comes back. Measured on the 2-core box (ViT-B/32, batch 32,
docs/performance.md): a background load of 0.27 cores cost one 2-thread call 18% of its
throughput, and two 1-thread calls on half a batch each 13% (the CPU taken, no more);
alone, the split ran 3% faster too. On a GPU nothing is split.

torch keeps its thread count per thread (OpenMP's per-thread setting), and also as a
process default that a thread copies when it first asks; the workers set theirs to 1,
and the default is put back once they have all started.

The workers take shards first come, first served, from every caller: a second batch's
call, made while the first is still running (``consumers/pipeline/batch.py``'s feed threads),
queues its shards behind the first's, so the worker that finishes first starts on the
next batch instead of idling until the other one is done.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from time import perf_counter
from typing import TypeVar

import torch

from consumers.ops.threads import named_pool

T = TypeVar("T")
R = TypeVar("R")

_START_TIMEOUT_S = 30.0
_LOCK = threading.Lock()
_POOLS: dict[int, CpuWorkers] = {}
_CALLER = threading.local()  # .starts: the list ``worker_starts`` collects into, if any


class CpuWorkers:
    """``count`` threads (OS name ``device``) that each run torch with one thread."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._pool = _start(count)

    def map(self, fn: Callable[[Sequence[T]], R], items: Sequence[T]) -> list[R]:
        """``fn`` on contiguous shards of ``items`` (sizes differ by one at most), one
        shard per worker, in parallel; the results in order."""
        starts: list[float] = []

        def run(shard: Sequence[T]) -> R:
            starts.append(perf_counter())
            return fn(shard)

        results = list(self._pool.map(run, split(items, self.count)))
        collector: list[float] | None = getattr(_CALLER, "starts", None)
        if collector is not None:
            collector.append(min(starts))
        return results


@contextmanager
def worker_starts() -> Iterator[list[float]]:
    """When a worker began each ``CpuWorkers.map`` this thread calls inside the block:
    a call's shards may wait behind another caller's, and that is not compute time."""
    previous = getattr(_CALLER, "starts", None)
    starts: list[float] = []
    _CALLER.starts = starts
    try:
        yield starts
    finally:
        _CALLER.starts = previous


def split(items: Sequence[T], parts: int) -> list[Sequence[T]]:
    """``items`` cut into ``min(parts, len(items))`` contiguous, near-equal shards."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [items[bounds[i] : bounds[i + 1]] for i in range(parts)]


def cpu_workers(device: torch.device, setting: int) -> CpuWorkers | None:
    """The process's shared workers for CPU inference, or None where a batch runs as one
    call: on an accelerator, or when ``setting`` (0 = one per torch thread) comes to 1."""
    if device.type != "cpu":
        return None
    count = setting or torch.get_num_threads()
    if count < 2:
        return None
    with _LOCK:
        if count not in _POOLS:
            _POOLS[count] = CpuWorkers(count)
        return _POOLS[count]


def _one_thread() -> None:
    # Reading the count first makes torch initialise this thread's setting from the
    # process default; done after set_num_threads, that would undo it at the first op.
    torch.get_num_threads()
    torch.set_num_threads(1)


def _start(count: int) -> ThreadPoolExecutor:
    default = torch.get_num_threads()
    pool = named_pool("device", count, setup=_one_thread)
    # Every worker waits at the barrier, so `count` tasks start `count` threads now.
    barrier = threading.Barrier(count, timeout=_START_TIMEOUT_S)
    list(pool.map(lambda _: barrier.wait(), range(count)))
    torch.set_num_threads(default)  # the workers' setting also became the process default
    return pool
