"""The consumer service: one FastStream Kafka batch subscriber per task on ``images.v1``.

Each task has its own consumer group, so tasks scale and fail independently. The ack
policy is manual: a batch's offsets are committed only after every one of its results
has been acknowledged by Kafka (acks=all). A whole-batch transient failure is retried
with backoff and then rewound (``nack`` seeks back), so no offset is ever committed past
an unprocessed event; with deterministic result ids and Milvus upserts a redelivery
yields the same results, not new ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from consumers.encoders import encoder_class
from consumers.kafka import make_broker
from consumers.metrics import BATCH_RETRIES, MODEL_LOAD_S, observe_results
from consumers.pipeline import ImagePipeline, Pools
from consumers.records import Record
from consumers.results import since
from consumers.s3 import S3Store, S3Unavailable
from consumers.settings import Settings
from consumers.store import StoreUnavailable, VectorStore
from consumers.tasks import task_class
from schemas.events import ImageSubmitted, TaskResult, dump
from schemas.topics import Topics

log = logging.getLogger("imagestream.consumer")
TRANSIENT = (S3Unavailable, StoreUnavailable, KafkaError, OSError)
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0)


async def raw_values(msg: Any) -> list[bytes]:
    """Hand the handler the raw bytes: a malformed event must become an error result,
    not a decoding exception that fails the whole batch."""
    return [record.value or b"" for record in msg.raw_message]


def commit_offsets(records: Sequence[Record]) -> dict[TopicPartition, int]:
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return offsets


class ConsumerService:
    """Build with settings (cheap, no I/O), then ``start()`` loads models and subscribes."""

    def __init__(self, settings: Settings, tasks: Sequence[str] | None = None) -> None:
        self.settings = settings
        self.topics = Topics(settings.kafka.topic_prefix)
        self.tasks = list(tasks if tasks is not None else settings.enabled_tasks())
        self.broker: KafkaBroker = make_broker(
            settings.kafka, graceful_timeout=20.0, apply_types=False
        )
        self.results = self.broker.publisher(
            self.topics.results,
            schema=TaskResult,
            title="results",
            description="One TaskResult per (image, task); key = image id.",
        )
        self.pipelines: dict[str, ImagePipeline] = {}
        self.ready = False
        self._s3 = S3Store(settings.s3)
        self._stores: list[VectorStore] = []
        self._pools: Pools | None = None
        for task in self.tasks:
            self._subscribe(task)

    def _subscribe(self, task: str) -> None:
        task_settings = self.settings.task(task)
        kafka = self.settings.kafka
        subscriber = self.broker.subscriber(
            self.topics.images,
            group_id=task_settings.group_id or f"imagestream-{task}",
            batch=True,
            max_records=task_settings.max_records,
            batch_timeout_ms=task_settings.batch_timeout_ms,
            ack_policy=AckPolicy.MANUAL,
            decoder=raw_values,
            auto_offset_reset=kafka.auto_offset_reset,
            session_timeout_ms=kafka.session_timeout_ms,
            heartbeat_interval_ms=kafka.heartbeat_interval_ms,
            max_poll_interval_ms=kafka.max_poll_interval_ms,
            title=f"{self.topics.images}:{task}",
            description=f"The {task} task's consumer group.",
        )

        async def handle(body: list[ImageSubmitted]) -> None:
            # The annotation documents the payload in AsyncAPI; the broker does not cast
            # (apply_types=False), so each event is validated on its own in the pipeline.
            await self._handle(task, self.broker.context.get_local("message"))

        subscriber(handle)

    async def start(self) -> None:
        self._pools = Pools(
            decode=ThreadPoolExecutor(self.settings.decode.threads, "decode"),
            device=ThreadPoolExecutor(1, "device"),
            store=ThreadPoolExecutor(1, "milvus"),
        )
        await self._s3.start()
        for task in self.tasks:
            self.pipelines[task] = await self._build_pipeline(task, self._pools)
        await self.broker.start()
        self.ready = True
        log.info("consuming %s for tasks %s", self.topics.images, ", ".join(self.tasks))

    async def _build_pipeline(self, task: str, pools: Pools) -> ImagePipeline:
        task_settings = self.settings.task(task)
        encoder = encoder_class(task)(task_settings, self.settings)
        started = perf_counter()
        await asyncio.to_thread(encoder.load)
        MODEL_LOAD_S.labels(task, encoder.model_name).set(perf_counter() - started)
        log.info(
            "%s: loaded %s (dim %d) on %s", task, encoder.model_name, encoder.dim, encoder.device
        )
        image_task_class = task_class(task)
        store = None
        if image_task_class.needs_store:  # labels and classify only score vectors
            store = VectorStore(self.settings.milvus, task_settings.collection, encoder.dim)
            await asyncio.get_running_loop().run_in_executor(pools.store, store.open)
            self._stores.append(store)
        image_task = image_task_class(encoder, store)
        return ImagePipeline(image_task, self._s3, self.settings.decode, pools)

    async def stop(self) -> None:
        self.ready = False
        await self.broker.stop()
        await self._s3.close()
        for store in self._stores:
            store.close()
        if self._pools is not None:
            for pool in (self._pools.decode, self._pools.device, self._pools.store):
                pool.shutdown(wait=True, cancel_futures=True)

    async def _handle(self, task: str, msg: Any) -> None:
        records = [Record.from_consumer_record(r) for r in msg.raw_message]
        try:
            results = await self._process(task, records)
            published = perf_counter()
            await self._publish(results)
            publish_ms = since(published)
        except Exception as exc:
            # Rewind rather than move on: the next poll replays this batch, so no
            # offset is ever committed past an event that has no result yet.
            log.error("%s: batch of %d failed, will replay: %r", task, len(records), exc)
            BATCH_RETRIES.labels(task, type(exc).__name__).inc()
            await asyncio.sleep(RETRY_DELAYS_S[-1])
            await msg.nack()
            return
        await self._commit(task, msg, records)
        observe_results(task, results, len(records), publish_ms)

    async def _process(self, task: str, records: list[Record]) -> list[TaskResult]:
        pipeline = self.pipelines[task]
        for delay in RETRY_DELAYS_S:
            try:
                return await pipeline.process(records)
            except TRANSIENT as exc:
                log.warning("%s: transient failure, retrying in %.1fs: %s", task, delay, exc)
                BATCH_RETRIES.labels(task, type(exc).__name__).inc()
                await asyncio.sleep(delay)
        return await pipeline.process(records)

    async def _publish(self, results: list[TaskResult]) -> None:
        headers = {"content-type": "application/json"}
        await asyncio.gather(
            *(
                self.results.publish(dump(r), key=r.image_id.encode(), headers=headers)
                for r in results
            )
        )

    async def _commit(self, task: str, msg: Any, records: list[Record]) -> None:
        try:
            await msg.consumer.commit(commit_offsets(records))
        except KafkaError as exc:
            # Lost to a rebalance: the batch is redelivered and yields the same result ids.
            log.warning("%s: commit failed, batch will be redelivered: %s", task, exc)
