"""The consumer service: wires one ``TaskWorker`` per task and the CLIP-side services.

Each task has its own consumer group on ``images.v1`` (``task_worker.py``), so tasks
scale and fail independently. Routers group the subscribers: the image tasks and what
they publish, and what is served from the CLIP model (text search on ``queries.v1``,
the gateway's requests on ``rpc.v1``). This module only builds, starts and stops them;
no batch passes through it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from time import perf_counter
from typing import Any

from faststream.kafka import KafkaBroker, KafkaRouter

from consumers.config.settings import Settings
from consumers.pipeline.pools import Pools
from consumers.pipeline.s3 import S3Store
from consumers.search.fusion import text_collections
from consumers.search.rpc import EncoderRpc
from consumers.search.text import TextSearch
from consumers.tasks.base import ImageTask
from consumers.vectorstore.text_store import TextStore
from consumers.worker.kafka import make_broker
from consumers.worker.publisher import ResultPublisher
from consumers.worker.stores import Stores
from consumers.worker.task_worker import TaskWorker
from schemas.topics import Topics

log = logging.getLogger("imagestream.consumer")


class ConsumerService:
    """Build with settings (cheap, no I/O), then ``start()`` loads models and subscribes."""

    def __init__(self, settings: Settings, tasks: Sequence[str] | None = None) -> None:
        self.settings = settings
        self.topics = Topics(settings.kafka.topic_prefix)
        self.tasks = list(tasks if tasks is not None else settings.enabled_tasks())
        self.broker: KafkaBroker = make_broker(
            settings.kafka,
            graceful_timeout=settings.delivery.graceful_timeout_s,
            # The decoders parse each record (consumers/worker/subscribe.py), so a bad
            # event is an error result rather than a batch FastStream failed to cast.
            apply_types=False,
        )
        self.stopping = asyncio.Event()
        self.ready = False
        self._s3 = S3Store(settings.s3)
        # Thread pools start their threads on first use, not here.
        self._pools = Pools.create(settings.decode.threads)
        self._stores = Stores(settings.milvus, self._pools.store)
        images = KafkaRouter()  # the image tasks' groups on images.v1, and what they publish
        self.publisher = ResultPublisher(images, self.topics, dlq=settings.delivery.dlq)
        self.workers = {
            task: TaskWorker(
                task,
                settings,
                images,
                self.topics.images,
                self.publisher,
                self._s3,
                self._pools,
                self.stopping,
            )
            for task in self.tasks
        }
        # Served where the CLIP model lives: the gateway's embeddings and labels, and text
        # search from the clip task's model and collection (consumers/search/).
        search = KafkaRouter()
        clip = "clip" in self.tasks
        self.rpc = EncoderRpc(search, self.topics, settings) if clip else None
        self.search = (
            TextSearch(search, self.topics, settings, self.publisher, self.stopping)
            if clip and settings.search.enabled
            else None
        )
        self.broker.include_routers(images, search)

    async def start(self) -> None:
        await self._s3.start()
        tasks = {name: await worker.start(self._stores) for name, worker in self.workers.items()}
        if "clip" in tasks:
            self._serve_clip(tasks["clip"], await self._text_stores())
        await self.broker.start()
        self.ready = True
        log.info("consuming %s for tasks %s", self.topics.images, ", ".join(self.tasks))

    def _serve_clip(self, clip: ImageTask[Any, Any], texts: dict[str, TextStore]) -> None:
        pools = self._pools
        if self.search is not None:
            self.search.bind(clip, pools.device, pools.store, texts)
        if self.rpc is not None:
            self.rpc.bind(clip.encoder, self._s3, pools.decode, pools.device)

    async def _text_stores(self) -> dict[str, TextStore]:
        """The caption and OCR text collections that text and hybrid search read (created
        empty when no task has written them yet)."""
        if self.search is None:
            return {}
        collections = text_collections(self.settings).items()
        return {name: await self._stores.texts(collection) for name, collection in collections}

    async def stop(self) -> None:
        """In-flight batches get ``graceful_timeout_s`` to finish; one waiting on a retry
        is abandoned at once. Either way nothing is committed past an unfinished batch."""
        self.ready = False
        self.stopping.set()
        started = perf_counter()
        timeout = self.settings.delivery.graceful_timeout_s
        await asyncio.gather(*(w.drain(timeout) for w in self.workers.values()))
        log.info("stopping: batches in flight drained after %.1fs", perf_counter() - started)
        await self.broker.stop()
        log.info(
            "stopping: Kafka consumers and producer closed after %.1fs", perf_counter() - started
        )
        await self._s3.close()
        for worker in self.workers.values():
            worker.close()
        self._stores.close()
        self._pools.shutdown()
