"""The batch a subscriber is working on, as seen by a shutdown and by a rebalance.

A batch's offsets may only be committed by the member that still owns its partitions,
and only once its results are acknowledged. When partitions are revoked, the listener
gives the in-flight batch ``graceful_timeout_s`` to finish (its commit then lands
before the partitions move); after that the batch keeps going but its revoked
partitions are neither committed nor rewound, and the new owner replays them from the
last commit. A batch whose partitions are all revoked, or whose consumer is stopping,
is abandoned at its next retry pause: nothing of it is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError

from consumers.records import Record

log = logging.getLogger("imagestream.consumer")


class Abandoned(Exception):
    """The consumer is stopping or lost the batch's partitions: give up, commit nothing."""


def partitions_of(records: Sequence[Record]) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(r.topic, r.partition) for r in records)


class InFlight:
    """One subscriber's current batch; ``stopping`` is shared by the whole service."""

    def __init__(self, stopping: asyncio.Event) -> None:
        self.stopping = stopping
        # Counts rebalances: a batch fetched before one may be stale (consumers/prefetch.py).
        self.rebalances = 0
        self._partitions: frozenset[TopicPartition] = frozenset()
        self._revoked: set[TopicPartition] = set()
        self._interrupted = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def batch(self, records: Sequence[Record]) -> Iterator[None]:
        self._partitions = partitions_of(records)
        self._revoked.clear()
        self._interrupted.clear()
        self._idle.clear()
        try:
            yield
        finally:
            self._partitions = frozenset()
            self._idle.set()

    @property
    def abandoned(self) -> bool:
        lost = bool(self._partitions) and self._partitions <= self._revoked
        return self.stopping.is_set() or lost

    def check(self) -> None:
        if self.abandoned:
            raise Abandoned("stopping" if self.stopping.is_set() else "partitions revoked")

    def touches(self, partitions: Collection[TopicPartition]) -> bool:
        return not self._partitions.isdisjoint(partitions)

    def revoke(self, partitions: Collection[TopicPartition]) -> None:
        self._revoked |= self._partitions & set(partitions)
        if self.abandoned:
            self._interrupted.set()

    def owned(self, offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """The offsets this member may still commit or rewind."""
        return {tp: offset for tp, offset in offsets.items() if tp not in self._revoked}

    async def pause(self, seconds: float) -> None:
        """Sleep, cut short by a shutdown or the loss of every partition of the batch."""
        waiters = [asyncio.ensure_future(e.wait()) for e in (self.stopping, self._interrupted)]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        self.check()

    async def wait_idle(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


class RevokeListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Lets the in-flight batch finish (and commit) before its partitions move."""

    def __init__(self, inflight: InFlight, wait_s: float, name: str) -> None:
        self.inflight = inflight
        self.wait_s = wait_s
        self.name = name

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        self.inflight.rebalances += 1
        if not self.inflight.touches(revoked) or await self.inflight.wait_idle(self.wait_s):
            return
        self.inflight.revoke(revoked)
        log.warning(
            "%s: partitions revoked while a batch was in flight; it will not be committed "
            "for %s (the new owner replays them)",
            self.name,
            ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(revoked)),
        )

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        """Nothing to do: positions come from the committed offsets."""


def earliest_offsets(records: Sequence[Record]) -> dict[TopicPartition, int]:
    earliest: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        earliest[tp] = min(earliest.get(tp, record.offset), record.offset)
    return earliest


def next_offsets(records: Sequence[Record]) -> dict[TopicPartition, int]:
    """What to commit after ``records``: per partition, one past the last record."""
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return offsets


def rewind(consumer: Any, inflight: InFlight, records: Sequence[Record]) -> None:
    """Seek every still-owned partition back to the batch's first record: the next poll
    replays the batch. (FastStream's ``nack`` would also seek revoked partitions.)"""
    for tp, offset in inflight.owned(earliest_offsets(records)).items():
        with contextlib.suppress(IllegalStateError):  # revoked between check and seek
            consumer.seek(tp, offset)
