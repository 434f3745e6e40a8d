"""Whole topics read from their beginning, and the DLQ replay (``imagestream dlq replay``).

The replay puts dead-lettered source records back on the images topic with their own
headers restored (the DLQ format is ``consumers/worker/dlq.py``'s); ``read_topic`` also
serves ``imagestream legacy resend``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from consumers.config.settings import Settings
from consumers.worker.dlq import REPLAYED_FROM, dlq_headers, original_headers
from consumers.worker.kafka import CLI_CLIENT_ID, client_kwargs, make_producer, started
from schemas.topics import Topics


@dataclass(frozen=True)
class ReplayFilter:
    codes: frozenset[str] = frozenset()  # empty = every code
    task: str | None = None

    def matches(self, info: dict[str, str]) -> bool:
        if self.codes and info.get("code") not in self.codes:
            return False
        return self.task is None or info.get("task") == self.task


async def replay(
    settings: Settings,
    chosen: ReplayFilter,
    *,
    dry_run: bool = False,
    limit: int | None = None,
    on_record: Callable[[dict[str, str]], None] = lambda _: None,
    idle_timeout_s: float = 30.0,
) -> int:
    """Re-publish matching DLQ records (as of now) to the images topic; returns how many.

    The DLQ is read from its beginning without a consumer group. Letters cut to fit the
    record size limit (header ``imagestream.dlq.truncated``) are skipped. A source record that
    several tasks dead-lettered is re-published once. Replaying again re-publishes again:
    harmless, since an event keeps its ``event_id`` and so its results keep their ids.
    """
    topics = Topics(settings.kafka.topic_prefix)
    chosen_records = []
    sources: set[str] = set()
    async with contextlib.aclosing(read_topic(settings, topics.dlq, idle_timeout_s)) as dlq:
        async for record in dlq:
            info = dlq_headers(record.headers)
            source = "/".join(info.get(f"source_{k}", "") for k in ("topic", "partition", "offset"))
            if not chosen.matches(info) or source in sources or "truncated" in info:
                continue  # a truncated letter no longer holds the event's bytes
            if limit is not None and len(sources) >= limit:
                break
            sources.add(source)
            chosen_records.append(record)
            on_record(info)
    if not dry_run:
        await _republish(settings, topics.images, chosen_records)
    return len(chosen_records)


async def _republish(settings: Settings, topic: str, records: Sequence[Any]) -> None:
    async with started(make_producer(settings.kafka, CLI_CLIENT_ID)) as producer:
        acks = []
        for record in records:
            where = f"{record.topic}/{record.partition}/{record.offset}".encode()
            headers = [*original_headers(record.headers), (REPLAYED_FROM, where)]
            acks.append(await producer.send(topic, record.value, key=record.key, headers=headers))
        await asyncio.gather(*acks)


async def read_topic(
    settings: Settings, topic: str, idle_timeout_s: float
) -> AsyncGenerator[Any, None]:
    """Every record of ``topic``, until the consumer has caught up with every partition.

    "Caught up" uses the high watermark of fetch responses, not ``end_offsets()``: the
    embedded Tansu broker answers ListOffsets with the last *batch*'s base offset + 1.
    """
    consumer = AIOKafkaConsumer(**client_kwargs(settings.kafka), enable_auto_commit=False)
    async with started(consumer):
        partitions = await _partitions(consumer, topic)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = asyncio.get_running_loop().time() + idle_timeout_s
        while not await _caught_up(consumer, partitions):
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    yield record
            if batch:
                deadline = asyncio.get_running_loop().time() + idle_timeout_s
            elif asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(
                    f"{topic}: nothing read for {idle_timeout_s:.0f}s before its end"
                )


async def _caught_up(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> bool:
    for tp in partitions:
        high = consumer.highwater(tp)
        if high is None or await consumer.position(tp) < high:
            return False
    return True


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    await consumer.topics()
    numbers: Collection[int] = consumer.partitions_for_topic(topic) or ()
    if not numbers:
        raise RuntimeError(f"topic {topic!r} does not exist")
    return [TopicPartition(topic, n) for n in sorted(numbers)]
