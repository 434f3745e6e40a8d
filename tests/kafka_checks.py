"""Looking at Kafka from the outside: end and committed offsets, whole topics.

End offsets come from fetch responses' high watermarks: the embedded Tansu broker
answers ListOffsets (``end_offsets()``, ``seek_to_end()``) with the last *batch*'s base
offset + 1, short of the real end whenever a batch held several records.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from consumers.config.settings import Settings
from consumers.ops.replay import read_topic
from consumers.worker.kafka import client_kwargs, started


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    await consumer.topics()
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]


async def _high_watermarks(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], timeout_s: float = 15.0
) -> dict[int, int]:
    consumer.assign(tps)
    short = await consumer.end_offsets(tps)  # never past the end: fetch from just before it
    for tp in tps:
        consumer.seek(tp, max(short[tp] - 1, 0))
    deadline = asyncio.get_running_loop().time() + timeout_s
    while any(consumer.highwater(tp) is None for tp in tps):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no fetch response for {tps}")
        await consumer.getmany(timeout_ms=200)
    return {tp.partition: consumer.highwater(tp) for tp in tps}


async def offsets(
    settings: Settings, topic: str, group: str
) -> tuple[dict[int, int], dict[int, int]]:
    """(end offset, committed offset or 0) per partition of ``topic`` for ``group``."""
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings.kafka), group_id=group, enable_auto_commit=False
    )
    async with started(consumer):
        tps = await _partitions(consumer, topic)
        committed = {tp.partition: await consumer.committed(tp) or 0 for tp in tps}
        return await _high_watermarks(consumer, tps), committed


async def wait_until_committed(
    settings: Settings, topic: str, group: str, timeout_s: float
) -> dict[int, int]:
    """Committed offsets once they reach the end of every partition (or fail)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        ends, committed = await offsets(settings, topic, group)
        if committed == ends:
            return committed
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{group} committed {committed}, topic ends at {ends}")
        await asyncio.sleep(0.5)


async def read_all(settings: Settings, topics: Iterable[str]) -> list[Any]:
    """Every record currently in ``topics``, from their beginnings."""
    records: list[Any] = []
    for topic in topics:
        records += [record async for record in read_topic(settings, topic, idle_timeout_s=30)]
    return records
