"""Overlapping consecutive batches: the next one starts before this one is committed.

One batch at a time leaves the model idle while a batch is fetched, decoded, written to
Milvus, published and committed. Here the FastStream handler for a batch starts its
whole delivery in a task of its own and returns, which lets Kafka's next poll happen,
at the *handoff*, placed by ``IMAGESTREAM_DELIVERY__PREFETCH``:

- ``decode`` (the default): when the batch is decoded. The next batch's S3 reads and
  decodes run beside this one's model call: on a GPU, CPU work beside GPU work; on a
  CPU they fill the cores' idle moments and pre-empt the model a little (measured in
  docs/performance.md).
- ``publish``: when the batch's model call ends. The next batch's reads, decodes and
  model call run beside this one's Milvus writes, publish and commit; on a CPU, nothing
  runs beside a model call (2% less throughput than ``decode`` there, and less latency
  at moderate load, since the next poll waits for the model call).
- ``fetch``: when the batch is fetched; the next one is read from S3 beside this one's
  decode and model call, and decoded after.
- ``off``: when the batch is committed: one batch at a time.

What keeps it safe:
- a batch commits only after the one before it has: commits stay in offset order;
- the handler returns only once the batch before is delivered or given up, so a
  rewind always happens before the next poll. At most two batches are in flight;
- a batch polled while the one before it was still in flight, when that one is then
  rewound for a replay, is stopped and rewound with it, so no offset is ever committed
  past an event without a result. One polled after the rewind, or after a rebalance
  in between (positions restarted from the committed offsets), goes on;
- at shutdown no new batch starts; those in flight get ``drain``'s timeout to commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from consumers.pipeline.records import Record
from consumers.worker.delivery import BatchHandler, Handled, Indexed
from consumers.worker.inflight import Flight, rewind

log = logging.getLogger("imagestream.consumer")

Handoff = Literal["prepared", "encoded", "delivered"]
# The prefetch setting's modes ("auto" resolved): where each hands off to the next poll.
HANDOFFS: dict[str, Handoff] = {
    "decode": "prepared",
    "fetch": "prepared",
    "publish": "encoded",
    "off": "delivered",
}
Prepare = Callable[[Sequence[Record]], Awaitable[Any]]
# complete(prepared, device_done): device_done is called once the model call has ended.
Complete = Callable[[Any, Callable[[], None]], Awaitable[Indexed]]
OnHandled = Callable[[Handled, int], None]


@dataclass(eq=False)
class _Polled:
    """A polled batch on its way: its delivery task and how far that got."""

    records: Sequence[Record]
    rebalances: int  # InFlight.rebalances when it was polled
    handoff: asyncio.Event = field(default_factory=asyncio.Event)
    # True once committed (or nothing to commit), False if rewound or given up.
    delivered: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    task: asyncio.Task[None] | None = None
    flight: Flight | None = None  # its InFlight entry (kept after, for its revocations)
    # Whether the outcome was known when the next poll began (then that one is fresh).
    settled_at_handoff: bool = False


class PrefetchingHandler:
    """Wraps a ``BatchHandler`` whose process is ``complete(await prepare(records))``."""

    def __init__(
        self,
        handler: BatchHandler,
        prepare: Prepare,
        complete: Complete,
        done: OnHandled,
        handoff: Handoff = "prepared",  # the default mode, decode
    ) -> None:
        self.handler = handler
        self.prepare = prepare
        self.complete = complete
        self.done = done
        self.handoff = handoff
        self._previous: _Polled | None = None
        self._polled: set[_Polled] = set()  # their deliveries not yet ended

    async def submit(self, consumer: Any, records: Sequence[Record]) -> None:
        """Called by the subscriber per polled batch: starts its delivery and returns at
        its handoff, once the batch before it is delivered or given up."""
        inflight = self.handler.inflight
        if inflight.stopping.is_set():
            return
        previous = self._previous
        polled = self._previous = _Polled(records, inflight.rebalances)
        self._polled.add(polled)
        polled.task = asyncio.create_task(self._deliver(consumer, polled, previous))
        # Cancelled before its first step, a task never runs its own finally.
        polled.task.add_done_callback(lambda _: self._settle(polled, None))
        try:
            if previous is not None and not await self._cleared(previous, polled):
                await self._rewind_after(consumer, previous, polled)
                return
            await polled.handoff.wait()  # set at the latest when the delivery ends
            polled.settled_at_handoff = polled.delivered.done()
        except asyncio.CancelledError:  # the subscriber is being torn down
            polled.task.cancel()
            raise

    async def _deliver(self, consumer: Any, polled: _Polled, previous: _Polled | None) -> None:
        async def first_attempt() -> Indexed:
            prepared = await self.prepare(polled.records)
            self._reached("prepared", polled)
            indexed = await self.complete(prepared, lambda: self._reached("encoded", polled))
            self._reached("encoded", polled)  # a batch with nothing to encode
            return indexed

        handled: Handled | None = None
        try:
            with self.handler.inflight.batch(polled.records) as polled.flight:
                handled = await self.handler.handle(
                    consumer, polled.flight, first_attempt, lambda: self._cleared(previous, polled)
                )
        except Exception:
            log.exception("%s: delivery of a batch failed", self.handler.task)
        finally:
            self._settle(polled, handled)
        if handled is not None:
            self.done(handled, len(polled.records))

    def _settle(self, polled: _Polled, handled: Handled | None) -> None:
        if not polled.delivered.done():
            polled.delivered.set_result(handled is not None)
        polled.handoff.set()
        self._polled.discard(polled)

    def _reached(self, stage: Handoff, polled: _Polled) -> None:
        if stage == self.handoff:
            polled.handoff.set()

    async def _cleared(self, previous: _Polled | None, polled: _Polled) -> bool:
        """Whether ``polled`` may commit (or rewind itself) as far as the batch before it
        goes: that one was delivered, or ``polled`` was polled after its rewind."""
        if previous is None or previous.settled_at_handoff:
            return True
        delivered = await asyncio.shield(previous.delivered)
        # A batch that failed before a rebalance says nothing of one polled after it: the
        # rebalance already restarted every partition from its committed offset.
        return delivered or previous.rebalances != polled.rebalances

    async def _rewind_after(self, consumer: Any, previous: _Polled, polled: _Polled) -> None:
        """``previous`` was not delivered: stop ``polled`` and rewind it with it."""
        if polled.task is not None:
            polled.task.cancel()
            await asyncio.wait({polled.task})
        self._previous = None  # the next poll comes after the rewind: nothing to wait for
        if not self.handler.inflight.stopping.is_set():
            flights = [p.flight for p in (previous, polled) if p.flight is not None]
            rewind(consumer, [*previous.records, *polled.records], *flights)
            log.info("%s: a batch rewound with the one before it", self.handler.task)

    async def drain(self, timeout_s: float) -> None:
        """Let the batches in flight finish (and commit) before the consumer closes."""
        tasks = {polled.task for polled in self._polled if polled.task is not None}
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
