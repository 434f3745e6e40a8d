"""Delivering one Kafka micro-batch: retries, split-to-isolate, publish, then commit.

At-least-once: a batch's offsets are committed only after every one of its results and
DLQ records has been acknowledged by Kafka (acks=all), and only for partitions this
member still owns (``consumers/worker/inflight.py``). What escapes the pipeline is handled by
kind:

- **transient** (S3, Milvus or Kafka unreachable): the whole batch is retried after
  each of ``retry_delays_s``; when they run out the batch is rewound and replayed from
  Kafka after ``replay_pause_s``. It waits; it never becomes an error result.
- **anything else** (a bug or a model failing on one input, CUDA out of memory): the
  batch is split in halves and each half delivered on its own (bisection), so every
  item that can be processed is; an item that still fails alone becomes an
  ``internal`` error result, and a DLQ record.

Per-item problems (bad events, missing or undecodable images) never reach this module:
the pipeline turns them into error results.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from time import perf_counter
from typing import Any

import torch
from aiokafka.errors import KafkaError

from consumers.config.settings import DeliverySettings
from consumers.ops.metrics import BATCH_RETRIES, observe_results
from consumers.pipeline.item_errors import ItemError
from consumers.pipeline.records import Record, parse_image_event
from consumers.pipeline.results import Stopwatch, error_result, since
from consumers.pipeline.s3 import S3Unavailable
from consumers.vectorstore.store import StoreUnavailable
from consumers.worker.fit import clean
from consumers.worker.inflight import (
    Abandoned,
    Flight,
    InFlight,
    RevokeListener,
    next_offsets,
    rewind,
)
from schemas.events import ErrorCode, TaskResult, utcnow

log = logging.getLogger("imagestream.consumer")

# OSError covers connection errors that libraries did not wrap (and TimeoutError).
TRANSIENT: tuple[type[BaseException], ...] = (S3Unavailable, StoreUnavailable, KafkaError, OSError)
_TRACKED_RECORDS = 100_000

Indexed = list[tuple[int, TaskResult]]
Process = Callable[[Sequence[Record]], Awaitable[Indexed]]
# A first attempt already under way (a prefetched batch); retries and splits use Process.
Attempt = Callable[[], Awaitable[Indexed]]
# Whether the batch polled before this one was delivered (consumers/worker/prefetch.py).
Cleared = Callable[[], Awaitable[bool]]


class BatchUnavailable(Exception):
    """A transient failure outlasted the retries: replay the batch later."""


@dataclass(frozen=True, slots=True)
class Delivered:
    """A record's result, with what a DLQ record needs to say about it."""

    record: Record
    result: TaskResult
    attempts: int
    first_seen: datetime


class Attempts:
    """How often, and since when, each record was tried by this process: across retries,
    splits and replays (a restart starts over). Bounded; forgotten once committed."""

    def __init__(self, limit: int = _TRACKED_RECORDS) -> None:
        self._seen: OrderedDict[str, tuple[datetime, int]] = OrderedDict()
        self._limit = limit

    def tried(self, records: Sequence[Record]) -> None:
        for record in records:
            first, count = self._seen.pop(record.position, (utcnow(), 0))
            self._seen[record.position] = (first, count + 1)
        while len(self._seen) > self._limit:
            self._seen.popitem(last=False)

    def of(self, record: Record) -> tuple[datetime, int]:
        return self._seen.get(record.position, (utcnow(), 1))

    def forget(self, records: Sequence[Record]) -> None:
        for record in records:
            self._seen.pop(record.position, None)


class BatchDelivery:
    """Results for every record of a batch that is for this task, or an exception:
    ``BatchUnavailable`` (replay it) or ``Abandoned`` (drop it uncommitted)."""

    def __init__(
        self,
        task: str,
        process: Process,
        settings: DeliverySettings,
        model: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.task = task
        self.process = process
        self.delays = list(settings.retry_delays_s)
        self.model = model
        self.attempts = Attempts()

    async def run(self, flight: Flight, first: Attempt | None = None) -> list[Delivered]:
        pairs = await self._deliver(flight, flight.records, first)
        return [Delivered(r, result, *self._seen(r)) for r, result in pairs]

    def _seen(self, record: Record) -> tuple[int, datetime]:
        first_seen, attempts = self.attempts.of(record)
        return attempts, first_seen

    async def _deliver(
        self, flight: Flight, records: Sequence[Record], first: Attempt | None = None
    ) -> list[tuple[Record, TaskResult]]:
        for delay in [*self.delays, None]:
            flight.check()
            self.attempts.tried(records)
            attempt, first = first or partial(self.process, records), None
            try:
                indexed = await attempt()
            except TRANSIENT as exc:
                if delay is None:
                    raise BatchUnavailable(f"{type(exc).__name__}: {exc}") from exc
                log.warning(
                    "%s: transient failure on %d events, retrying in %.1fs: %s",
                    *(self.task, len(records), delay, exc),
                )
                BATCH_RETRIES.labels(self.task, type(exc).__name__).inc()
                await flight.pause(delay)
                continue
            except Exception as exc:
                return await self._split(flight, records, exc)
            return [(records[i], result) for i, result in indexed]
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _split(
        self, flight: Flight, records: Sequence[Record], exc: Exception
    ) -> list[tuple[Record, TaskResult]]:
        if isinstance(exc, torch.OutOfMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()  # halves of the batch may fit where the whole did not
        if len(records) == 1:
            log.error("%s: %s fails on its own: %r", self.task, records[0].position, exc)
            return [(records[0], self._internal(records[0], exc))]
        log.warning(
            "%s: batch of %d failed (%s: %s); splitting it to isolate the cause",
            *(self.task, len(records), type(exc).__name__, exc),
        )
        BATCH_RETRIES.labels(self.task, f"split:{type(exc).__name__}").inc()
        middle = len(records) // 2
        halves = records[:middle], records[middle:]
        return [*await self._deliver(flight, halves[0]), *await self._deliver(flight, halves[1])]

    def _internal(self, record: Record, exc: Exception) -> TaskResult:
        event = parse_image_event(record)  # an event or a BadEvent: both carry the ids
        message = clean(f"internal error on this event alone: {type(exc).__name__}: {exc}", 1000)
        return error_result(
            self.task,
            event.event_id,
            event.image_id,
            ItemError(ErrorCode.INTERNAL, message),
            model=self.model(),
            watch=Stopwatch(),
            collection=getattr(event, "collection", None),  # a BadEvent has none
        )


Publish = Callable[[str, list[Delivered]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Handled:
    delivered: list[Delivered]
    publish_ms: float


def record_handled(task: str, handled: Handled, polled: int) -> None:
    """A delivered batch's results, batch size and publish time, for Prometheus."""
    observe_results(task, [d.result for d in handled.delivered], polled, handled.publish_ms)


class BatchHandler:
    """One subscriber's batches: deliver, publish (results + DLQ), commit or rewind."""

    def __init__(
        self,
        task: str,
        process: Process,
        publish: Publish,
        settings: DeliverySettings,
        stopping: asyncio.Event,
        model: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.task = task
        self.publish = publish
        self.settings = settings
        self.inflight = InFlight(stopping)
        self.listener = RevokeListener(self.inflight, settings.graceful_timeout_s, task)
        self.delivery = BatchDelivery(task, process, settings, model)

    async def handle(
        self,
        consumer: Any,
        flight: Flight,
        first: Attempt | None = None,
        cleared: Cleared | None = None,
    ) -> Handled | None:
        """What was published and committed (revoked partitions left out), else None:
        the batch was rewound for a replay, or abandoned. ``flight`` comes from
        ``self.inflight.batch``. With ``cleared``, the batch is committed or rewound only
        once the one before it was delivered; if it was not, neither happens here (the
        caller rewinds both together)."""
        try:
            delivered = await self.delivery.run(flight, first)
            started = perf_counter()
            await self.publish(self.task, delivered)
            publish_ms = since(started)
        except Abandoned as exc:
            log.warning(
                "%s: batch of %d abandoned, not committed: %s", self.task, len(flight.records), exc
            )
            return None
        except Exception as exc:
            # Kafka down, retries run out, or a bug outside the pipeline (publishing):
            # never move past the batch, replay it.
            if cleared is None or await cleared():
                await self._replay_later(consumer, flight, exc)
            return None
        if cleared is not None and not await cleared():
            return None
        await self._commit(consumer, flight)
        return Handled(delivered, publish_ms)

    async def _replay_later(self, consumer: Any, flight: Flight, exc: Exception) -> None:
        # Rewind rather than move on, so no offset is ever committed past an event that
        # has no result yet; the pause keeps a long outage from spinning.
        unexpected = not isinstance(exc, (BatchUnavailable, KafkaError))
        log.error(
            "%s: batch of %d failed, will replay: %s",
            *(self.task, len(flight.records), exc),
            exc_info=exc if unexpected else None,
        )
        BATCH_RETRIES.labels(self.task, type(exc).__name__).inc()
        try:
            await flight.pause(self.settings.replay_pause_s)
        except Abandoned:
            return  # stopping: the next owner starts from the last commit anyway
        rewind(consumer, flight.records, flight)

    async def _commit(self, consumer: Any, flight: Flight) -> None:
        # aiokafka's commit of this batch's own offsets, not FastStream's ack: an ack
        # commits the consumer's positions, past the batch polled next (prefetch) and
        # on partitions this member has lost.
        records = flight.records
        offsets = flight.owned(next_offsets(records))
        try:
            if offsets:
                await consumer.commit(offsets)
        except KafkaError as exc:
            # Lost to a rebalance: the batch is redelivered and yields the same result ids.
            log.warning("%s: commit failed, batch will be redelivered: %s", self.task, exc)
            return
        self.delivery.attempts.forget(records)
