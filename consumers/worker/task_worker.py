"""One image task's consumer: its subscriber, delivery, pipeline and publishing.

Built whole before the broker starts (FastStream needs subscribers declared by then);
``start`` loads the model and opens the stores. A polled batch walks forward from here:
the subscriber's decoder (``subscribe.py``) -> ``PrefetchingHandler`` (``prefetch.py``)
-> ``BatchHandler`` (``delivery.py``) -> ``ImagePipeline`` (``pipeline/batch.py``) ->
``ResultPublisher`` (``publisher.py``) -> the commit, back in ``delivery.py``.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from time import perf_counter
from typing import Any

from faststream.kafka import KafkaRouter

from consumers.config.settings import Settings
from consumers.models.registry import make_encoder
from consumers.ops.metrics import MODEL_LOAD_S
from consumers.pipeline.batch import ImagePipeline
from consumers.pipeline.pools import Pools
from consumers.pipeline.s3 import S3Store
from consumers.tasks.base import ImageTask
from consumers.tasks.registry import task_class
from consumers.vectorstore.keys import StagingAreas
from consumers.worker.delivery import BatchHandler, record_handled
from consumers.worker.prefetch import HANDOFFS, PrefetchingHandler
from consumers.worker.publisher import ResultPublisher
from consumers.worker.stores import Stores
from consumers.worker.subscribe import PolledBatch, batch_subscriber
from schemas.events import ImageSubmitted

log = logging.getLogger("imagestream.consumer")


class TaskWorker:
    def __init__(
        self,
        name: str,
        settings: Settings,
        router: KafkaRouter,
        topic: str,
        publisher: ResultPublisher,
        s3: S3Store,
        pools: Pools,
        stopping: asyncio.Event,
    ) -> None:
        self.name = name
        self.settings = settings
        staging = StagingAreas.of(settings)
        self.pipeline = ImagePipeline(name, s3, settings.decode, pools, staging)
        pipeline = self.pipeline
        self.delivery = BatchHandler(
            name,
            pipeline.process_indexed,
            publisher.for_task(pipeline),
            settings.delivery,
            stopping,
            model=pipeline.model_name,
        )
        mode = _prefetch(settings)
        self.handler = PrefetchingHandler(
            self.delivery,
            partial(pipeline.prepare, decode=mode != "fetch"),
            pipeline.complete,
            partial(record_handled, name),
            HANDOFFS[mode],
        )
        subscriber = batch_subscriber(
            router,
            topic,
            name,
            settings.task(name),
            settings.kafka,
            model=ImageSubmitted,
            listener=self.delivery.listener,
            description=f"The {name} task's consumer group.",
        )
        subscriber(self.handle)

    async def handle(self, batch: PolledBatch[ImageSubmitted]) -> None:
        await self.handler.submit(batch.consumer, batch.records)

    async def start(self, stores: Stores) -> ImageTask[Any, Any]:
        """Load the model (in a thread) and open the task's stores; then it can serve."""
        encoder = make_encoder(self.name, self.settings)
        started = perf_counter()
        await asyncio.to_thread(encoder.load)
        MODEL_LOAD_S.labels(self.name, encoder.model_name).set(perf_counter() - started)
        log.info(
            "%s: loaded %s (dim %d) on %s",
            *(self.name, encoder.model_name, encoder.dim, encoder.device),
        )
        cls = task_class(self.name)
        store = None
        if cls.needs_store:  # labels and classify only score vectors
            store = await stores.vectors(self.settings.task(self.name).collection, encoder.dim)
        task = cls(encoder, store)
        text_collection = cls.text_collection(self.settings)
        if text_collection is not None:  # OCR text, captions: for text search and classify
            task.text_store = await stores.texts(text_collection)
        self.pipeline.bind(task)
        return task

    async def drain(self, timeout_s: float) -> None:
        await self.handler.drain(timeout_s)

    def close(self) -> None:
        self.pipeline.close()


def _prefetch(settings: Settings) -> str:
    mode = settings.delivery.prefetch
    return "decode" if mode == "auto" else mode  # auto: kept for older configs
