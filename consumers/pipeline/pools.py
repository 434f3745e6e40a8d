"""Where a consumer's blocking work runs: thread pools by role."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from consumers.ops.threads import named_pool
from consumers.tasks.base import ImageTask


@dataclass(frozen=True)
class Pools:
    """Where blocking work runs: many decode threads, one device thread, one store thread,
    and two feed threads.

    A model call on an accelerator runs on the device thread, one at a time. One on the
    CPU workers (``ImageTask.infers_on_cpu_workers``) runs on a feed thread, which only
    hands the shards over and waits: with two, the next batch's shards queue behind this
    one's, so neither worker idles at the boundary between batches (2% more throughput in
    the load test, docs/performance.md). The workers' queue keeps the calls in order; a
    one-image call skips it and runs at once on torch's threads (the fastest answer at
    low load, when it is also the likeliest).
    """

    decode: ThreadPoolExecutor
    device: ThreadPoolExecutor
    store: ThreadPoolExecutor
    feed: ThreadPoolExecutor

    @classmethod
    def create(cls, decode_threads: int) -> Pools:
        threads = (("decode", decode_threads), ("device", 1), ("milvus", 1), ("feed", 2))
        return cls(*(named_pool(name, n) for name, n in threads))

    def shutdown(self) -> None:
        for pool in (self.decode, self.device, self.store, self.feed):
            pool.shutdown(wait=True, cancel_futures=True)

    def model(self, task: ImageTask[Any, Any]) -> ThreadPoolExecutor:
        """Where ``task``'s model call runs."""
        return self.feed if task.infers_on_cpu_workers else self.device
