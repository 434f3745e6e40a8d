"""Overlapping batches (consumers/worker/prefetch.py): the next batch starts at the handoff its
mode sets, yet commits stay in order and nothing is committed past an undelivered batch.

The consumer here is a recorder of commits and seeks, and the pipeline halves are plain
async functions; the real broker and servers run the same code in test_clip_pipeline,
test_shutdown_rebalance and test_chaos.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from consumers.config.settings import DeliverySettings
from consumers.pipeline.records import Record
from consumers.pipeline.s3 import S3Unavailable
from consumers.worker.delivery import BatchHandler, Handled, Indexed
from consumers.worker.prefetch import HANDOFFS, PrefetchingHandler
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
    """prepare / complete / publish with a log of each step; a batch's gates (by first
    offset) hold its model call ("encode") or its publish until set."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.unavailable: set[int] = set()  # first offsets whose prepare fails for good
        self.publish_fails: set[int] = set()  # first offsets whose publish fails
        self.handled: list[int] = []  # batch sizes the done callback saw

    def hold(self, step: str, first: int) -> asyncio.Event:
        return self.gates.setdefault(f"{step} {first}", asyncio.Event())

    async def _step(self, step: str, first: int) -> None:
        self.log.append(f"{step} {first}")
        if (gate := self.gates.get(f"{step} {first}")) is not None:
            await gate.wait()

    async def prepare(self, records: Sequence[Record]) -> Sequence[Record]:
        await self._step("prepare", records[0].offset)
        if records[0].offset in self.unavailable:
            raise S3Unavailable("S3 is unavailable")
        return records

    async def complete(self, records: Sequence[Record], device_done: Callable[[], None]) -> Indexed:
        await self._step("encode", records[0].offset)
        device_done()
        return [(i, _ok(r)) for i, r in enumerate(records)]

    async def process(self, records: Sequence[Record]) -> Indexed:
        return await self.complete(await self.prepare(records), lambda: None)

    async def publish(self, task: str, delivered: list[Any]) -> None:
        first = delivered[0].record.offset
        await self._step("publish", first)
        if first in self.publish_fails:
            raise KafkaConnectionError("the broker is down")


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
    stages: Stages, mode: str = "publish", settings: DeliverySettings = FAST
) -> PrefetchingHandler:
    def done(handled: Handled, polled: int) -> None:
        stages.handled.append(polled)

    handler = BatchHandler("clip", stages.process, stages.publish, settings, asyncio.Event())
    return PrefetchingHandler(handler, stages.prepare, stages.complete, done, HANDOFFS[mode])


async def _settle() -> None:
    await asyncio.sleep(0.05)


async def test_the_next_batch_runs_beside_the_previous_ones_publish_and_commits_after_it() -> None:
    stages, consumer = Stages(), Consumer()
    prefetching = _handler(stages)
    published = stages.hold("publish", 0)
    await prefetching.submit(consumer, _batch(0))  # returns as batch 0's model call ends
    second = asyncio.create_task(prefetching.submit(consumer, _batch(4)))
    await _settle()
    # Batch 4 was fetched and encoded while batch 0 waits on its publish ...
    assert stages.log == [
        "prepare 0",
        "encode 0",
        "publish 0",
        "prepare 4",
        "encode 4",
        "publish 4",
    ]
    # ... but commits only after batch 0, and its handler waits for batch 0's outcome.
    assert consumer.commits == []
    assert not second.done()
    published.set()
    await second
    await prefetching.drain(5.0)
    assert consumer.commits == [{TP: 4}, {TP: 8}]
    assert stages.handled == [4, 4]


@pytest.mark.parametrize(
    ("mode", "returns_after"),
    [("decode", "prepare"), ("fetch", "prepare"), ("publish", "encode"), ("off", "publish")],
)
async def test_each_mode_hands_off_to_the_next_poll_at_its_own_step(
    mode: str, returns_after: str
) -> None:
    stages, consumer = Stages(), Consumer()
    prefetching = _handler(stages, mode)
    steps = ["prepare", "encode", "publish"]
    gates = [stages.hold(step, 0) for step in steps]
    submitted = asyncio.create_task(prefetching.submit(consumer, _batch(0)))
    for step, gate in zip(steps, gates, strict=True):
        await _settle()
        assert not submitted.done(), f"{mode} returned before {step} ended"
        gate.set()
        if step == returns_after:
            break
    await _settle()
    assert submitted.done()
    for gate in gates:
        gate.set()
    await prefetching.drain(5.0)
    assert consumer.commits == [{TP: 4}]


@pytest.mark.parametrize("mode", ["publish", "decode", "fetch", "off"])
async def test_commits_stay_in_poll_order_and_every_batch_is_published(mode: str) -> None:
    stages, consumer = Stages(), Consumer()
    prefetching = _handler(stages, mode)
    for first in range(0, 40, 4):
        await prefetching.submit(consumer, _batch(first))
    await prefetching.drain(5.0)
    assert consumer.commits == [{TP: first + 4} for first in range(0, 40, 4)]
    assert [line for line in stages.log if line.startswith("publish")] == [
        f"publish {first}" for first in range(0, 40, 4)
    ]
    assert stages.handled == [4] * 10
    assert consumer.seeks == []


async def test_a_batch_after_one_that_failed_is_stopped_and_rewound_with_it() -> None:
    stages, consumer = Stages(), Consumer()
    stages.publish_fails.add(0)  # batch 0: Kafka refuses its results after the handoff
    prefetching = _handler(stages)
    encoding = stages.hold("encode", 4)  # batch 4 is on the device when batch 0 gives up
    await prefetching.submit(consumer, _batch(0))
    await prefetching.submit(consumer, _batch(4))
    await prefetching.drain(5.0)
    assert consumer.commits == []
    assert "publish 4" not in stages.log
    # Batch 0 rewound itself to 0; stopping batch 4 rewinds to the earliest of both.
    assert consumer.seeks == [(TP, 0), (TP, 0)]
    # The replay is delivered normally: the failure is not held against later batches.
    stages.publish_fails.clear()
    encoding.set()
    await prefetching.submit(consumer, _batch(0))
    await prefetching.submit(consumer, _batch(4))
    await prefetching.drain(5.0)
    assert consumer.commits == [{TP: 4}, {TP: 8}]


async def test_a_batch_that_fails_itself_waits_for_its_predecessor_before_rewinding() -> None:
    stages, consumer = Stages(), Consumer()
    stages.unavailable.add(4)
    published = stages.hold("publish", 0)
    prefetching = _handler(stages)
    await prefetching.submit(consumer, _batch(0))
    second = asyncio.create_task(prefetching.submit(consumer, _batch(4)))
    await asyncio.sleep(0.2)  # batch 4 ran out of retries while batch 0 publishes
    assert consumer.seeks == []  # a rewind to 4 now would skip batch 0 if it failed
    published.set()
    await second
    await prefetching.drain(5.0)
    assert consumer.commits == [{TP: 4}]
    assert consumer.seeks == [(TP, 4)]


async def test_a_batch_lost_to_a_rebalance_does_not_hold_back_one_polled_after_it() -> None:
    stages, consumer = Stages(), Consumer()
    stages.unavailable.add(0)
    slow = DeliverySettings(retry_delays_s=[0.2] * 5, graceful_timeout_s=0.05)
    prefetching = _handler(stages, settings=slow)
    first = asyncio.create_task(prefetching.submit(consumer, _batch(0)))
    await _settle()  # batch 0 waits on a retry
    await prefetching.handler.listener.on_partitions_revoked({TP})  # it is abandoned
    await first
    # Polled after the rebalance (positions restarted from the committed offsets):
    await prefetching.submit(consumer, _batch(4))
    await prefetching.drain(5.0)
    assert consumer.commits == [{TP: 8}]
    assert consumer.seeks == []


async def test_stopping_drains_the_batches_in_flight_and_takes_no_new_one() -> None:
    stages, consumer = Stages(), Consumer()
    published = stages.hold("publish", 0)
    prefetching = _handler(stages)
    await prefetching.submit(consumer, _batch(0))
    second = asyncio.create_task(prefetching.submit(consumer, _batch(4)))
    await _settle()  # batch 0 publishing, batch 4 encoded
    prefetching.handler.inflight.stopping.set()
    await prefetching.submit(consumer, _batch(8))
    asyncio.get_running_loop().call_later(0.05, published.set)
    await prefetching.drain(5.0)
    await second
    assert consumer.commits == [{TP: 4}, {TP: 8}]
    assert "prepare 8" not in stages.log
