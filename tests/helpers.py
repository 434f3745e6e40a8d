"""Test helpers shared by the integration tests (plain functions, no fixtures)."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import Sequence

import numpy as np
from aiokafka import AIOKafkaConsumer
from PIL import Image

from consumers.config.settings import Settings
from consumers.pipeline.s3 import S3Store
from consumers.worker.kafka import CLI_CLIENT_ID, make_producer, started
from schemas.events import ImageSubmitted, TaskResult, dump
from schemas.topics import Topics


def jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def sample_jpeg(name: str) -> bytes:
    import skimage.data

    return jpeg(np.asarray(getattr(skimage.data, name)()))


def event(image_id: str, uri: str, **fields: object) -> ImageSubmitted:
    return ImageSubmitted.model_validate(
        {"event_id": uuid.uuid4().hex, "image_id": image_id, "uri": uri, **fields}
    )


async def upload(settings: Settings, objects: dict[str, bytes], bucket: str | None = None) -> None:
    """Put ``objects`` (key -> bytes) into ``bucket``, the configured bucket by default."""
    async with S3Store(settings.s3) as s3:
        for key, data in objects.items():
            await s3.put(bucket or settings.s3.bucket, key, data)


async def produce(settings: Settings, messages: Sequence[tuple[bytes | None, bytes]]) -> None:
    """Publish raw (key, value) pairs to the images topic in one burst."""
    topic = Topics(settings.kafka.topic_prefix).images
    await produce_records(settings, [(topic, key, value, []) for key, value in messages])


Headers = list[tuple[str, bytes]]


async def produce_records(
    settings: Settings, records: Sequence[tuple[str, bytes | None, bytes, Headers]]
) -> None:
    """Publish raw (topic, key, value, headers) records in one burst, in order."""
    async with started(make_producer(settings.kafka, CLI_CLIENT_ID)) as producer:
        futures = [
            await producer.send(topic, value, key=key, headers=headers)
            for topic, key, value, headers in records
        ]
        await asyncio.gather(*futures)


async def produce_events(settings: Settings, events: Sequence[ImageSubmitted]) -> None:
    await produce(settings, [(e.image_id.encode(), dump(e)) for e in events])


async def collect(reader: AIOKafkaConsumer, count: int, timeout_s: float) -> list[TaskResult]:
    """Read results until ``count`` arrived or the time is up."""
    results: list[TaskResult] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(results) < count and loop.time() < deadline:
        batches = await reader.getmany(timeout_ms=500)
        for records in batches.values():
            results.extend(TaskResult.model_validate_json(r.value) for r in records)
    return results
