"""Publishing from the adapter: acks=all, awaited, retried while Kafka is down."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

log = logging.getLogger("imagestream.legacy")
RETRY_MAX_S = 10.0


async def publish_until_acked(
    producer: AIOKafkaProducer, topic: str, key: str, value: bytes, stop: asyncio.Event
) -> None:
    """What is being published exists nowhere else (a polled job, a failed callback), so
    keep trying until Kafka acknowledges it; give up only when asked to stop."""
    delay = 0.5
    while True:
        try:
            await producer.send_and_wait(topic, value, key=key.encode())
            return
        except KafkaError as exc:
            if stop.is_set():
                log.error("stopping with a record unpublished on %s: %r", topic, value[:2000])
                raise
            log.warning("publishing to %s failed, retrying in %.1fs: %r", topic, delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
