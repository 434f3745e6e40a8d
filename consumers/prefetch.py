"""Prefetch: fetch and decode batch N+1 while batch N is on the device.

Without it a consumer alternates: S3 reads and JPEG decodes, then the model call, then
Milvus, publish and commit, and the device idles through the first half. Here the
FastStream handler for batch N+1 starts its fetch and decode at once, waits for batch N
to be delivered, then hands N+1 to a delivery task of its own and returns, so Kafka's
next poll and the next prefetch overlap N+1's model call.

The handoff is the bounded queue: one batch delivering and one being prepared, never
more (memory stays two batches of tensors). Deliveries run one at a time in poll order,
so commits stay in offset order. A prefetched batch is dropped, uncommitted, when
- the consumer is stopping (the next owner replays it from the last commit);
- a rebalance began after it was polled (positions restart from the committed offsets);
- the batch before it was not delivered: that batch was rewound, and this one is
  rewound with it, so no offset is ever committed past an event without a result.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from consumers.delivery import BatchHandler, Handled, Indexed
from consumers.inflight import rewind
from consumers.records import Record

log = logging.getLogger("imagestream.consumer")

Prepare = Callable[[Sequence[Record]], Awaitable[Any]]
Complete = Callable[[Any], Awaitable[Indexed]]
OnHandled = Callable[[Handled, int], None]


@dataclass(frozen=True, slots=True)
class _Delivering:
    records: Sequence[Record]
    rebalances: int  # InFlight.rebalances when it was polled
    delivered: asyncio.Task[bool]  # shielded when awaited: a cancelled handler must not stop it


class PrefetchingHandler:
    """Wraps a ``BatchHandler`` whose process is ``complete(await prepare(records))``."""

    def __init__(
        self, handler: BatchHandler, prepare: Prepare, complete: Complete, done: OnHandled
    ) -> None:
        self.handler = handler
        self.prepare = prepare
        self.complete = complete
        self.done = done
        self._previous: _Delivering | None = None

    async def submit(self, consumer: Any, records: Sequence[Record]) -> None:
        """Called by the subscriber per polled batch; returns once the batch is handed
        to delivery (or dropped), which is when the previous one is delivered."""
        inflight = self.handler.inflight
        if inflight.stopping.is_set():
            return
        rebalances = inflight.rebalances
        prepared = asyncio.ensure_future(self.prepare(records))
        previous = self._previous
        try:
            delivered = previous is None or await asyncio.shield(previous.delivered)
        except asyncio.CancelledError:  # the subscriber is being torn down
            prepared.cancel()
            raise
        self._previous = None
        if inflight.stopping.is_set() or inflight.rebalances != rebalances:
            await _discard(prepared)
            return
        # A batch that failed before a rebalance says nothing of one polled after it:
        # the rebalance already restarted every partition from its committed offset.
        if previous is not None and not delivered and previous.rebalances == rebalances:
            await _discard(prepared)
            rewind(consumer, inflight, [*previous.records, *records])
            log.info("%s: prefetched batch of %d rewound", self.handler.task, len(records))
            return
        task = asyncio.create_task(self._deliver(consumer, records, prepared))
        self._previous = _Delivering(records, rebalances, task)

    async def _deliver(
        self, consumer: Any, records: Sequence[Record], prepared: asyncio.Future[Any]
    ) -> bool:
        async def first_attempt() -> Indexed:
            return await self.complete(await prepared)

        try:
            handled = await self.handler.handle(consumer, records, first_attempt)
        except Exception:
            log.exception("%s: delivery of a batch of %d failed", self.handler.task, len(records))
            return False
        finally:
            await _discard(prepared)  # a no-op unless the first attempt never awaited it
        if handled is None:
            return False
        self.done(handled, len(records))
        return True

    async def drain(self, timeout_s: float) -> None:
        """Let the batch being delivered finish (and commit) before the consumer closes."""
        if self._previous is not None and not self._previous.delivered.done():
            await asyncio.wait({self._previous.delivered}, timeout=timeout_s)


async def _discard(prepared: asyncio.Future[Any]) -> None:
    """Cancel a prefetch nobody will use and consume its outcome (no 'never retrieved')."""
    prepared.cancel()
    await asyncio.wait({prepared})  # unlike ``await``, never raises the prefetch's error
    if not prepared.cancelled():
        prepared.exception()
