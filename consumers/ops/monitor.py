"""Polled gauges: consumer lag per partition and GPU memory, refreshed on an interval.

Lag is what an operator scales on: for every partition assigned to one of this
process's consumer groups, the partition's end offset minus the group's committed
offset, both asked of the broker, so a consumer stuck in a long batch still reports
a growing lag. Each process reports only the partitions it owns, so summing over
processes gives the group's lag; partitions that moved away after a rebalance are
dropped from this process's series at the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faststream.kafka import KafkaBroker

from consumers.ops.metrics import CONSUMER_LAG, END_OFFSET, GPU_MEMORY

log = logging.getLogger("imagestream.monitor")
_POLL_TIMEOUT_S = 10.0

LagKey = tuple[str, str, str]  # group, topic, partition


async def group_lag(group: str, consumer: AIOKafkaConsumer) -> dict[LagKey, tuple[int, int]]:
    """(end offset, lag) for every partition assigned to ``consumer``."""
    tps: list[TopicPartition] = sorted(consumer.assignment())
    if not tps:
        return {}
    ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
    committed = await asyncio.gather(*(consumer.committed(tp) for tp in tps))
    # A group that never committed starts from the earliest offset (auto_offset_reset).
    missing = [tp for tp, offset in zip(tps, committed, strict=True) if offset is None]
    starts: dict[TopicPartition, int] = await consumer.beginning_offsets(missing) if missing else {}
    lags: dict[LagKey, tuple[int, int]] = {}
    for tp, offset in zip(tps, committed, strict=True):
        # The high watermark of the last fetch too: the embedded Tansu broker's
        # ListOffsets can answer less than it (seen with several partitions per produce).
        end = max(ends[tp], consumer.highwater(tp) or 0)
        done = starts[tp] if offset is None else offset
        lags[(group, tp.topic, str(tp.partition))] = (end, max(end - done, 0))
    return lags


def gpu_memory(cuda: Any) -> dict[tuple[str, str], float]:
    """Bytes per (device, kind) for a process that uses CUDA; nothing otherwise.

    ``cuda`` is ``torch.cuda``. Reading the allocator's counters never creates a CUDA
    context, so a CPU-only process on a GPU machine reserves no GPU memory for this.
    """
    if not cuda.is_available() or not cuda.is_initialized():
        return {}
    found: dict[tuple[str, str], float] = {}
    for index in range(cuda.device_count()):
        device = f"cuda:{index}"
        found[(device, "allocated")] = float(cuda.memory_allocated(index))
        found[(device, "reserved")] = float(cuda.memory_reserved(index))
        found[(device, "total")] = float(cuda.get_device_properties(index).total_memory)
    return found


class Monitor:
    """Refreshes the lag and GPU gauges for the given brokers' subscribers."""

    def __init__(self, brokers: Sequence[KafkaBroker], cuda: Any | None = None) -> None:
        self.brokers = list(brokers)
        self._cuda = cuda
        self._keys: dict[str, set[LagKey]] = {}  # what each group last reported
        self._ends: set[tuple[str, str]] = set()

    def _consumers(self) -> list[tuple[str, AIOKafkaConsumer]]:
        found = []
        for broker in self.brokers:
            for sub in broker.subscribers:
                consumer = getattr(sub, "consumer", None)
                group = getattr(sub, "group_id", None)
                if consumer is not None and group:
                    found.append((group, consumer))
        return found

    async def poll(self) -> None:
        for group, consumer in self._consumers():
            try:
                lags = await asyncio.wait_for(group_lag(group, consumer), _POLL_TIMEOUT_S)
            except Exception as exc:  # a rebalance or a broker hiccup: keep the last values
                log.debug("lag of %s not read this time: %r", group, exc)
                continue
            self._set_lags(group, lags)
        # torch is only looked at when this process imported it: no GPU, no import.
        cuda = self._cuda or getattr(sys.modules.get("torch"), "cuda", None)
        if cuda is not None:
            for (device, kind), value in gpu_memory(cuda).items():
                GPU_MEMORY.labels(device, kind).set(value)

    def _set_lags(self, group: str, lags: dict[LagKey, tuple[int, int]]) -> None:
        for key in self._keys.get(group, set()) - lags.keys():
            CONSUMER_LAG.remove(*key)
        for key, (end, lag) in lags.items():
            CONSUMER_LAG.labels(*key).set(lag)
            END_OFFSET.labels(key[1], key[2]).set(end)
        self._keys[group] = set(lags)
        owned = {(key[1], key[2]) for keys in self._keys.values() for key in keys}
        for topic, partition in self._ends - owned:
            END_OFFSET.remove(topic, partition)
        self._ends = owned

    def clear(self) -> None:
        """Drop every series this monitor set (its consumers are gone)."""
        for group in list(self._keys):
            self._set_lags(group, {})

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # the gauges go stale; the consumers must not notice
                log.exception("monitor poll failed")
            await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def monitoring(
    brokers: Sequence[KafkaBroker], interval_s: float, cuda: Any | None = None
) -> AsyncIterator[Monitor]:
    """Poll in the background while inside; stop before the brokers do."""
    monitor = Monitor(brokers, cuda)
    task = asyncio.create_task(monitor.run(interval_s), name="imagestream-monitor")
    try:
        yield monitor
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        monitor.clear()
