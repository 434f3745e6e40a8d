"""Prefetch (consumers/prefetch.py): batch N+1 is fetched and decoded while batch N is
encoded, yet commits stay in order and nothing is committed past an undelivered batch.

The consumer here is a recorder of commits and seeks, and the pipeline halves are plain
async functions; the real broker and servers run the same code in test_clip_pipeline,
test_shutdown_rebalance and test_chaos.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import TopicPartition

from consumers.delivery import BatchHandler, Handled, Indexed
from consumers.prefetch import PrefetchingHandler
from consumers.records import Record
from consumers.s3 import S3Unavailable
from consumers.settings import DeliverySettings
from schemas.events import Status, TaskResult, result_id

FAST = DeliverySettings(retry_delays_s=[0.01], replay_pause_s=0.01)
TP = TopicPartition("images.v1", 0)


class Consumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


class Stages:
    """prepare/complete with a log of when each ran; ``gate`` holds a batch's complete."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.gates: dict[int, asyncio.Event] = {}
        self.unavailable: set[int] = set()  # first offsets whose prepare fails for good
        self.handled: list[int] = []  # batch sizes the done callback saw

    async def prepare(self, records: Sequence[Record]) -> Sequence[Record]:
        first = records[0].offset
        self.log.append(f"prepare {first}")
        if first in self.unavailable:
            raise S3Unavailable("S3 is unavailable")
        return records

    async def complete(self, records: Sequence[Record]) -> Indexed:
        first = records[0].offset
        self.log.append(f"complete {first}")
        if first in self.gates:
            await self.gates[first].wait()
        self.log.append(f"completed {first}")
        return [(i, _ok(r)) for i, r in enumerate(records)]

    async def process(self, records: Sequence[Record]) -> Indexed:
        return await self.complete(await self.prepare(records))


def _ok(record: Record) -> TaskResult:
    event_id = f"e{record.offset}"
    return TaskResult(
        result_id=result_id(event_id, "clip"),
        source_event_id=event_id,
        image_id=f"img{record.offset}",
        task="clip",
        status=Status.OK,
    )


def _batch(first: int, n: int = 4) -> list[Record]:
    return [Record("images.v1", 0, first + i, b"k", b"{}") for i in range(n)]


def _handler(
    stages: Stages, published: list[int] | None = None, settings: DeliverySettings = FAST
) -> PrefetchingHandler:
    async def publish(task: str, delivered: list[Any]) -> None:
        if published is not None:
            published.extend(d.record.offset for d in delivered)

    def done(handled: Handled, polled: int) -> None:
        stages.handled.append(polled)

    handler = BatchHandler("clip", stages.process, publish, settings, asyncio.Event())
    return PrefetchingHandler(handler, stages.prepare, stages.complete, done)


async def _batch_4_behind_batch_0(
    stages: Stages, consumer: Consumer
) -> tuple[PrefetchingHandler, asyncio.Task[None]]:
    """Batch 0 held on the device (its gate), batch 4 polled meanwhile."""
    stages.gates[0] = asyncio.Event()
    prefetching = _handler(stages)
    await prefetching.submit(consumer, _batch(0))
    second = asyncio.create_task(prefetching.submit(consumer, _batch(4)))
    await asyncio.sleep(0.05)
    return prefetching, second


async def test_the_next_batch_is_prepared_while_the_current_one_is_on_the_device() -> None:
    stages, consumer = Stages(), Consumer()
    prefetching, second = await _batch_4_behind_batch_0(stages, consumer)
    # Batch 0 is held on the device; batch 4 was prepared meanwhile, and waits.
    assert stages.log == ["prepare 0", "complete 0", "prepare 4"]
    assert not second.done()
    assert consumer.commits == []
    stages.gates[0].set()
    await second
    await prefetching.drain(5.0)
    assert stages.log[3:] == ["completed 0", "complete 4", "completed 4"]
    assert consumer.commits == [{TP: 4}, {TP: 8}]


async def test_commits_stay_in_poll_order_and_every_batch_is_published() -> None:
    stages, consumer, published = Stages(), Consumer(), []
    prefetching = _handler(stages, published)
    for first in range(0, 40, 4):
        await prefetching.submit(consumer, _batch(first))
    await prefetching.drain(5.0)
    assert consumer.commits == [{TP: first + 4} for first in range(0, 40, 4)]
    assert published == list(range(40))
    assert stages.handled == [4] * 10
    assert consumer.seeks == []


async def test_a_batch_after_one_that_failed_is_dropped_and_rewound_with_it() -> None:
    stages, consumer, published = Stages(), Consumer(), []
    stages.unavailable.add(0)  # batch 0: S3 stays down past the retries
    prefetching = _handler(stages, published)
    await prefetching.submit(consumer, _batch(0))
    await prefetching.submit(consumer, _batch(4))
    await prefetching.drain(5.0)
    assert consumer.commits == []
    assert published == []
    # Batch 0 rewound itself to 0; dropping batch 4 rewinds to the earliest of both.
    assert consumer.seeks == [(TP, 0), (TP, 0)]
    # The replay is delivered normally: the failure is not held against later batches.
    stages.unavailable.clear()
    await prefetching.submit(consumer, _batch(0))
    await prefetching.submit(consumer, _batch(4))
    await prefetching.drain(5.0)
    assert consumer.commits == [{TP: 4}, {TP: 8}]


async def test_a_batch_polled_before_a_rebalance_is_dropped_uncommitted() -> None:
    stages, consumer = Stages(), Consumer()
    prefetching, second = await _batch_4_behind_batch_0(stages, consumer)
    await prefetching.handler.listener.on_partitions_revoked(set())  # a rebalance begins
    stages.gates[0].set()
    await second
    await prefetching.drain(5.0)
    # Batch 0 was in flight and commits; batch 4 restarts from the committed offset.
    assert consumer.commits == [{TP: 4}]
    assert "complete 4" not in stages.log
    assert consumer.seeks == []


async def test_a_batch_lost_to_a_rebalance_does_not_hold_back_the_next_poll() -> None:
    stages, consumer = Stages(), Consumer()
    stages.unavailable.add(0)
    slow = DeliverySettings(retry_delays_s=[0.2] * 5, graceful_timeout_s=0.05)
    prefetching = _handler(stages, settings=slow)
    await prefetching.submit(consumer, _batch(0))
    await asyncio.sleep(0.05)  # batch 0 waits on a retry
    await prefetching.handler.listener.on_partitions_revoked({TP})  # it is abandoned
    # Polled after the rebalance (positions restarted from the committed offsets):
    await prefetching.submit(consumer, _batch(4))
    await prefetching.drain(5.0)
    assert consumer.commits == [{TP: 8}]
    assert consumer.seeks == []


async def test_stopping_drains_the_batch_in_flight_and_takes_no_new_one() -> None:
    stages, consumer = Stages(), Consumer()
    stages.gates[0] = asyncio.Event()
    prefetching = _handler(stages)
    await prefetching.submit(consumer, _batch(0))
    await asyncio.sleep(0.01)  # batch 0 is on the device
    prefetching.handler.inflight.stopping.set()
    await prefetching.submit(consumer, _batch(4))
    asyncio.get_running_loop().call_later(0.05, stages.gates[0].set)
    await prefetching.drain(5.0)
    assert consumer.commits == [{TP: 4}]
    assert "prepare 4" not in stages.log
