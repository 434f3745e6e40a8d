"""What the gateway holds for its lifetime: S3, a Kafka producer, and one Kafka reader.

The reader is group-less and assigned every partition of two topics: ``rpc.replies.v1``
(from the end: replies to this gateway's requests, matched by ``correlation_id``; other
gateways' replies are skipped) and ``results.v1`` (from ``results_lookback_s`` ago),
which feeds the result cache behind ``GET /v1/results/{image_id}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from consumers.config.settings import Settings
from consumers.gateway.cache import ResultCache
from consumers.pipeline.s3 import S3Store
from consumers.worker.kafka import client_kwargs, make_producer
from schemas.events import ImageSubmitted, TaskResult, dump, utcnow
from schemas.rpc import RpcReply, RpcRequest
from schemas.topics import Topics

log = logging.getLogger("imagestream.gateway")


class GatewayRuntime:
    """Cheap to build (no I/O); ``start()`` connects and ``stop()`` disconnects."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = Topics(settings.kafka.topic_prefix)
        self.cache = ResultCache(settings.gateway.results_cache_images)
        self.s3 = S3Store(settings.s3)
        self.producer: AIOKafkaProducer | None = None  # aiokafka wants a running loop
        self.ready = False
        self._pending: dict[str, asyncio.Future[RpcReply]] = {}
        self._reader: AIOKafkaConsumer | None = None
        self._reading: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.s3.start()
        self.producer = make_producer(self.settings.kafka, "imagestream-gateway")
        await self.producer.start()
        kwargs = client_kwargs(self.settings.kafka) | {"client_id": "imagestream-gateway"}
        # aiokafka itself, not a FastStream subscriber: the reader assigns itself every
        # partition, seeks results by time, and must hold its position before the first
        # request is sent (or an early reply is missed); a subscriber gives no such hold.
        # A short fetch wait: replies are what a caller is waiting on.
        self._reader = AIOKafkaConsumer(**kwargs, enable_auto_commit=False, fetch_max_wait_ms=50)
        await self._reader.start()
        await self._position(self._reader)
        self._reading = asyncio.create_task(self._read(self._reader))
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        if self._reading is not None:
            self._reading.cancel()
            await asyncio.gather(self._reading, return_exceptions=True)
        if self._reader is not None:
            await self._reader.stop()
        if self.producer is not None:
            await self.producer.stop()
        await self.s3.close()

    def _producer(self) -> AIOKafkaProducer:
        if self.producer is None:
            raise RuntimeError("GatewayRuntime.start() has not been called")
        return self.producer

    async def _partitions(self, reader: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
        partitions = reader.partitions_for_topic(topic) or set()
        if not partitions:
            raise RuntimeError(f"topic {topic!r} does not exist: run `imagestream topics create`")
        return [TopicPartition(topic, p) for p in sorted(partitions)]

    async def _position(self, reader: AIOKafkaConsumer) -> None:
        await reader.topics()  # refreshes metadata so the partition lists are current
        replies = await self._partitions(reader, self.topics.rpc_replies)
        results = await self._partitions(reader, self.topics.results)
        reader.assign([*replies, *results])
        await reader.seek_to_end(*replies)
        since = int((time.time() - self.settings.gateway.results_lookback_s) * 1000)
        try:
            found = await reader.offsets_for_times(dict.fromkeys(results, since))
        except KafkaError as exc:
            log.warning("cannot look back in %s (%r): reading from its end", results[0], exc)
            found = {}
        for tp in results:
            hit = found.get(tp)
            if hit is None:
                await reader.seek_to_end(tp)
            else:
                reader.seek(tp, hit.offset)
        for tp in (*replies, *results):  # resolve lazy seeks before the first request
            await reader.position(tp)

    async def _read(self, reader: AIOKafkaConsumer) -> None:
        while True:
            try:
                batches = await reader.getmany(timeout_ms=1000)
            except KafkaError as exc:
                log.warning("reading replies and results failed, retrying: %r", exc)
                await asyncio.sleep(1.0)
                continue
            for records in batches.values():
                for record in records:
                    self._dispatch(record)

    def _dispatch(self, record: Any) -> None:
        try:
            if record.topic == self.topics.rpc_replies:
                headers = dict(record.headers or ())
                cid = (headers.get("correlation_id") or b"").decode(errors="replace")
                future = self._pending.get(cid)
                if future is not None and not future.done():
                    future.set_result(RpcReply.model_validate_json(record.value or b"{}"))
            else:
                self.cache.add(TaskResult.model_validate_json(record.value or b"{}"))
        except ValidationError as exc:
            log.warning("skipping an unreadable record on %s: %s", record.topic, exc)

    async def call(self, request: RpcRequest, timeout_s: float) -> RpcReply:
        """One encoder request; ``TimeoutError`` when no consumer answered in time."""
        cid = uuid.uuid4().hex
        future: asyncio.Future[RpcReply] = asyncio.get_running_loop().create_future()
        self._pending[cid] = future
        headers = [
            ("reply_to", self.topics.rpc_replies.encode()),
            ("correlation_id", cid.encode()),
            ("content-type", b"application/json"),
        ]
        try:
            async with asyncio.timeout(timeout_s):
                await self._producer().send_and_wait(
                    self.topics.rpc, dump(request), headers=headers
                )
                return await future
        finally:
            self._pending.pop(cid, None)

    def deadline(self, timeout_s: float) -> datetime:
        return utcnow() + timedelta(seconds=timeout_s)

    async def submit(self, event: ImageSubmitted) -> None:
        await self._producer().send_and_wait(
            self.topics.images, dump(event), key=event.image_id.encode()
        )

    async def stage(self, key: str, data: bytes, content_type: str | None) -> str:
        bucket = self.settings.s3.bucket
        await self.s3.put(bucket, key, data, content_type=content_type)
        return f"s3://{bucket}/{key}"

    async def unstage(self, keys: list[str]) -> None:
        """Best effort: leftovers (a crash in between) are for a bucket lifecycle rule."""
        if not keys:
            return
        objects: Any = [{"Key": key} for key in keys]
        try:
            await self.s3.client.delete_objects(
                Bucket=self.settings.s3.bucket, Delete={"Objects": objects, "Quiet": True}
            )
        except Exception as exc:
            log.warning("could not delete %d staged upload(s): %r", len(keys), exc)
