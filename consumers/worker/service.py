"""The consumer service: one FastStream Kafka batch subscriber per task on ``images.v1``.

Each task has its own consumer group, so tasks scale and fail independently. The ack
policy is manual. How a batch is retried, split, published and committed lives in
``consumers/worker/delivery.py`` (with ``inflight.py`` for shutdown and rebalances, ``dlq.py``
for dead letters); this module wires the subscribers, publishers and pipelines.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from functools import partial
from time import perf_counter
from typing import Any

from faststream.kafka import KafkaBroker

from consumers.config.settings import Settings
from consumers.models import make_encoder
from consumers.ops.metrics import MODEL_LOAD_S, observe_results, record_dlq
from consumers.pipeline.batch import ImagePipeline, Pools, Prepared
from consumers.pipeline.records import Record
from consumers.pipeline.s3 import S3Store
from consumers.search.fusion import text_collections
from consumers.search.rpc import EncoderRpc
from consumers.search.text import TextSearch
from consumers.tasks import task_class
from consumers.vectorstore.keys import StagingAreas
from consumers.vectorstore.store import VectorStore
from consumers.vectorstore.text_store import TextStore
from consumers.worker.delivery import BatchHandler, Delivered, Handled, Indexed
from consumers.worker.dlq import dead_letter
from consumers.worker.fit import publish_result
from consumers.worker.kafka import make_broker
from consumers.worker.prefetch import HANDOFFS, PrefetchingHandler
from consumers.worker.subscribe import batch_subscriber
from schemas.events import ImageSubmitted, TaskResult, dump
from schemas.people import PersonChanged, person_key
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
            apply_types=False,
        )
        self.results = self.broker.publisher(
            self.topics.results,
            schema=TaskResult,
            title="results",
            description="One TaskResult per (image, task); key = image id.",
        )
        self.dlq = self.broker.publisher(
            self.topics.dlq,
            title="dlq",
            description="Bad input: the original key, bytes and headers + imagestream.dlq.* "
            "headers (see consumers/worker/dlq.py).",
        )
        self.people = self.broker.publisher(
            self.topics.people,
            schema=PersonChanged,
            title="people",
            description="How the face task groups faces into persons; key = [tenant/]person id.",
        )
        # The gateway's embeddings and labels are served where the CLIP model lives.
        self.rpc = EncoderRpc(self.broker, self.topics, settings) if "clip" in self.tasks else None
        self.pipelines: dict[str, ImagePipeline] = {}
        self.handlers: dict[str, PrefetchingHandler] = {}
        self.stopping = asyncio.Event()
        self.ready = False
        self._s3 = S3Store(settings.s3)
        self._stores: list[VectorStore | TextStore] = []
        self._texts: dict[str, TextStore] = {}  # by collection: a task and search share one
        self._pools: Pools | None = None
        for task in self.tasks:
            self._subscribe(task)
        # Text search answers from the clip task's model and collection (consumers/search/text.py).
        self.search = (
            TextSearch(self.broker, self.topics, settings, self.results, self.stopping)
            if "clip" in self.tasks and settings.search.enabled
            else None
        )

    def _subscribe(self, task: str) -> None:
        handler = BatchHandler(
            task,
            partial(self._process, task),
            self._publish,
            self.settings.delivery,
            self.stopping,
            model=lambda: self.pipelines[task].task.model_name,
        )
        self.handlers[task] = PrefetchingHandler(
            handler,
            partial(self._prepare, task),
            partial(self._complete, task),
            partial(self._observe, task),
            HANDOFFS[self._prefetch()],
        )
        subscriber = batch_subscriber(
            self.broker,
            self.topics.images,
            task,
            self.settings.task(task),
            self.settings.kafka,
            listener=handler.listener,
            description=f"The {task} task's consumer group.",
        )

        async def handle(body: list[ImageSubmitted]) -> None:
            # The annotation documents the payload in AsyncAPI; the broker does not cast
            # (apply_types=False), so each event is validated on its own in the pipeline.
            await self._handle(task, self.broker.context.get_local("message"))

        subscriber(handle)

    async def start(self) -> None:
        self._pools = Pools.create(self.settings.decode.threads)
        await self._s3.start()
        for task in self.tasks:
            self.pipelines[task] = await self._build_pipeline(task, self._pools)
        if self.search is not None:
            texts = await self._open_text_stores(self._pools)
            self.search.bind(
                self.pipelines["clip"].task, self._pools.device, self._pools.store, texts
            )
        if self.rpc is not None:
            encoder = self.pipelines["clip"].task.encoder
            self.rpc.bind(encoder, self._s3, self._pools.decode, self._pools.device)
        await self.broker.start()
        self.ready = True
        log.info("consuming %s for tasks %s", self.topics.images, ", ".join(self.tasks))

    async def _build_pipeline(self, task: str, pools: Pools) -> ImagePipeline:
        task_settings = self.settings.task(task)
        encoder = make_encoder(task, self.settings)
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
        staging = StagingAreas.of(self.settings)
        text_collection = image_task_class.text_collection(self.settings)
        if text_collection is not None:  # OCR text, captions: for text search and classify
            image_task.text_store = await self._text_store(text_collection, pools)
        return ImagePipeline(image_task, self._s3, self.settings.decode, pools, staging)

    async def _open_text_stores(self, pools: Pools) -> dict[str, TextStore]:
        """The caption and OCR text collections that text and hybrid search read (created
        empty when no task has written them yet)."""
        return {
            name: await self._text_store(collection, pools)
            for name, collection in text_collections(self.settings).items()
        }

    async def _text_store(self, collection: str, pools: Pools) -> TextStore:
        """The open store of one text collection, opened on first use (in the store thread,
        which every call on it uses)."""
        if collection not in self._texts:
            store = TextStore(self.settings.milvus, collection)
            await asyncio.get_running_loop().run_in_executor(pools.store, store.open)
            self._stores.append(store)
            self._texts[collection] = store
        return self._texts[collection]

    async def stop(self) -> None:
        """In-flight batches get ``graceful_timeout_s`` to finish; one waiting on a retry
        is abandoned at once. Either way nothing is committed past an unfinished batch."""
        self.ready = False
        self.stopping.set()
        started = perf_counter()
        timeout = self.settings.delivery.graceful_timeout_s
        await asyncio.gather(*(h.drain(timeout) for h in self.handlers.values()))
        log.info("stopping: batches in flight drained after %.1fs", perf_counter() - started)
        await self.broker.stop()
        log.info(
            "stopping: Kafka consumers and producer closed after %.1fs", perf_counter() - started
        )
        await self._s3.close()
        for pipeline in self.pipelines.values():
            pipeline.task.close()
        for store in self._stores:
            store.close()
        if self._pools is not None:
            self._pools.shutdown()

    async def _handle(self, task: str, msg: Any) -> None:
        records = [Record.from_consumer_record(r) for r in msg.raw_message]
        await self.handlers[task].submit(msg.consumer, records)

    def _prefetch(self) -> str:
        mode = self.settings.delivery.prefetch
        return "decode" if mode == "auto" else mode  # auto: kept for older configs

    def _observe(self, task: str, handled: Handled, polled: int) -> None:
        observe_results(task, [d.result for d in handled.delivered], polled, handled.publish_ms)

    # Pipelines are built in start(), after the subscribers: look them up per call.
    async def _process(self, task: str, records: Sequence[Record]) -> Indexed:
        return await self.pipelines[task].process_indexed(records)

    async def _prepare(self, task: str, records: Sequence[Record]) -> Prepared:
        decode = self._prefetch() != "fetch"
        return await self.pipelines[task].prepare(records, decode=decode)

    async def _complete(
        self, task: str, prepared: Prepared, device_done: Callable[[], None]
    ) -> Indexed:
        return await self.pipelines[task].complete(prepared, device_done)

    async def _publish(self, task: str, delivered: list[Delivered]) -> None:
        """Every result, and a DLQ record for bad input; returns once Kafka acked all."""
        sends = [publish_result(self.results, d.result) for d in delivered]
        if task in self.pipelines:
            changes = self.pipelines[task].task.people_events([d.result for d in delivered])
            headers = {"content-type": "application/json"}
            sends += [
                self.people.publish(dump(c), key=person_key(c.tenant, c.person_id), headers=headers)
                for c in changes
            ]
        letters = [letter for d in delivered if (letter := dead_letter(d)) is not None]
        if self.settings.delivery.dlq:
            sends += [self.dlq.publish(x.value, key=x.key, headers=x.headers) for x in letters]
        # All sends finish (acked or failed) before a failure is raised for the replay.
        for outcome in await asyncio.gather(*sends, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
        if self.settings.delivery.dlq:
            for letter in letters:
                record_dlq(task, letter.headers["imagestream.dlq.code"])
