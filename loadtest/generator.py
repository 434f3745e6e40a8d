"""The load generator: images into S3, events at a rate, results back as samples.

The result reader is positioned at the end of the results topic before the first event
of a phase goes out (``consumers.client.ingest.result_reader``), and reads while the phase
publishes, so a result's ``received`` time is when this process saw it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice

from consumers.client.ingest import result_reader, wait_for_results
from consumers.config.settings import Settings
from consumers.pipeline.s3 import S3Store
from consumers.worker.kafka import CLI_CLIENT_ID, make_producer, started
from loadtest.stats import Sample, sample
from loadtest.synth import jpegs
from schemas.events import ImageSubmitted, TaskResult, dump
from schemas.topics import Topics

_GENERATE_CHUNK = 16


@dataclass
class Phase:
    """One stream of events: ``count`` images at ``rate`` per second (None = at once)."""

    name: str
    count: int
    rate: float | None = None
    samples: list[Sample] = field(default_factory=list)
    started: float = 0.0
    published: float = 0.0  # when the last event was acknowledged by the broker
    finished: float = 0.0


async def upload_images(
    s3: S3Store, bucket: str, count: int, prefix: str, on_done: Callable[[int], None]
) -> list[str]:
    """``count`` distinct synthetic JPEGs at ``s3://bucket/prefix/NNNNNN.jpg``."""
    await s3.ensure_bucket(bucket)
    generated = jpegs(count)
    uris: list[str] = []
    while len(uris) < count:
        chunk = await asyncio.to_thread(lambda: list(islice(generated, _GENERATE_CHUNK)))
        keys = [f"{prefix}/{len(uris) + i:06d}.jpg" for i in range(len(chunk))]
        await asyncio.gather(
            *(
                s3.put(bucket, k, d, content_type="image/jpeg")
                for k, d in zip(keys, chunk, strict=True)
            )
        )
        uris.extend(f"s3://{bucket}/{key}" for key in keys)
        on_done(len(chunk))
    return uris


async def presigned_urls(s3: S3Store, uris: Sequence[str], expires_s: int = 3600) -> list[str]:
    """Plain HTTPS(HTTP) GET links, the kind of ``s3_path`` the legacy backend hands out."""
    urls = []
    for uri in uris:
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        params = {"Bucket": bucket, "Key": key}
        urls.append(
            await s3.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s)
        )
    return urls


def _events(
    phase: Phase, uris: Sequence[str], run_id: str, task: str, same_images: bool = False
) -> list[ImageSubmitted]:
    """Objects are reused round-robin. Image ids are unique per phase and run, or with
    ``same_images`` one per object (the same images submitted again: a collection that
    stops growing)."""
    return [
        ImageSubmitted(
            event_id=uuid.uuid4().hex,
            image_id=(
                f"{run_id}-{i % len(uris):06d}" if same_images else f"{run_id}-{phase.name}-{i:06d}"
            ),
            uri=uris[i % len(uris)],
            tasks=[task],
            top_k=20,
        )
        for i in range(phase.count)
    ]


async def _publish(settings: Settings, events: list[ImageSubmitted], rate: float | None) -> None:
    """At once, or paced: event i goes out at start + i / rate. ``submitted_at`` is
    stamped just before each send, so a late send does not count as queueing."""
    topic = Topics(settings.kafka.topic_prefix).images
    async with started(make_producer(settings.kafka, CLI_CLIENT_ID)) as producer:
        start = time.monotonic()
        pending = []
        for i, event in enumerate(events):
            if rate:
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            stamped = event.model_copy(update={"submitted_at": datetime.now(UTC)})
            pending.append(await producer.send(topic, dump(stamped), key=event.image_id.encode()))
        await asyncio.gather(*pending)


async def run_phase(
    settings: Settings,
    phase: Phase,
    uris: Sequence[str],
    *,
    run_id: str,
    task: str,
    timeout_s: float,
    on_result: Callable[[Sample], None] = lambda _: None,
    same_images: bool = False,
) -> Phase:
    events = _events(phase, uris, run_id, task, same_images)
    expected = {e.event_id: {task} for e in events}

    def received(result: TaskResult) -> None:
        item = sample(result, time.time())
        phase.samples.append(item)
        on_result(item)

    async with result_reader(settings) as reader:
        phase.started = time.time()
        reading = asyncio.create_task(wait_for_results(reader, expected, timeout_s, received))
        try:
            await _publish(settings, events, phase.rate)
            phase.published = time.time()
            await reading
        finally:
            if not reading.done():
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
    phase.finished = time.time()
    return phase
