"""The batches a subscriber is working on, as seen by a shutdown and by a rebalance.

A batch's offsets may only be committed by the member that still owns its partitions,
and only once its results are acknowledged. When partitions are revoked, the listener
gives the batches in flight ``graceful_timeout_s`` to finish (their commits then land
before the partitions move); after that they keep going but their revoked
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

from consumers.pipeline.records import Record

log = logging.getLogger("imagestream.consumer")


class Abandoned(Exception):
    """The consumer is stopping or lost the batch's partitions: give up, commit nothing."""


def partitions_of(records: Sequence[Record]) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(r.topic, r.partition) for r in records)


class Flight:
    """One batch in flight: its records, and which of its partitions were revoked since
    it started (positions of those restart from the committed offsets once reassigned,
    so this batch must neither commit nor rewind them)."""

    def __init__(self, records: Sequence[Record], stopping: asyncio.Event) -> None:
        self.records = records
        self.partitions = partitions_of(records)
        self.revoked: set[TopicPartition] = set()
        self.stopping = stopping
        self._interrupted = asyncio.Event()

    @property
    def abandoned(self) -> bool:
        lost = bool(self.partitions) and self.partitions <= self.revoked
        return self.stopping.is_set() or lost

    def check(self) -> None:
        if self.abandoned:
            raise Abandoned("stopping" if self.stopping.is_set() else "partitions revoked")

    def revoke(self, partitions: Collection[TopicPartition]) -> None:
        self.revoked |= self.partitions & set(partitions)
        if self.abandoned:
            self._interrupted.set()

    def owned(self, offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """The offsets this member may still commit or rewind."""
        return {tp: offset for tp, offset in offsets.items() if tp not in self.revoked}

    async def pause(self, seconds: float) -> None:
        """Sleep, cut short by a shutdown or the loss of every partition of the batch."""
        waiters = [asyncio.ensure_future(e.wait()) for e in (self.stopping, self._interrupted)]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        self.check()


class InFlight:
    """One subscriber's batches in flight (two overlap: ``consumers/worker/prefetch.py``);
    ``stopping`` is shared by the whole service."""

    def __init__(self, stopping: asyncio.Event) -> None:
        self.stopping = stopping
        # Counts rebalances: a batch polled before one may be stale (consumers/worker/prefetch.py).
        self.rebalances = 0
        self._flights: list[Flight] = []
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def batch(self, records: Sequence[Record]) -> Iterator[Flight]:
        flight = Flight(records, self.stopping)
        self._flights.append(flight)
        self._idle.clear()
        try:
            yield flight
        finally:
            self._flights.remove(flight)
            if not self._flights:
                self._idle.set()

    def touches(self, partitions: Collection[TopicPartition]) -> bool:
        return any(not flight.partitions.isdisjoint(partitions) for flight in self._flights)

    def revoke(self, partitions: Collection[TopicPartition]) -> None:
        for flight in self._flights:
            flight.revoke(partitions)

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


def rewind(consumer: Any, records: Sequence[Record], *flights: Flight) -> None:
    """Seek every partition of ``records`` not revoked under ``flights`` back to the
    records' first offset: the next poll replays them. (FastStream's ``nack`` would also
    seek revoked partitions.)"""
    revoked = set().union(*(flight.revoked for flight in flights))
    for tp, offset in earliest_offsets(records).items():
        if tp not in revoked:
            with contextlib.suppress(IllegalStateError):  # revoked between check and seek
                consumer.seek(tp, offset)
