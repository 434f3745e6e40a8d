"""Text-to-image search (seed 002's ``/getBestPictures``, seed 003's goal), both sides.

Consumer: ``TextSearch`` subscribes to ``queries.v1`` in its own group
(``imagestream-search``) beside the clip task, whose loaded CLIP model and Milvus
collection it uses: texts are embedded by the model that embedded the images. A batch of
queries is one text-encoder call and one Milvus search per (tenant, id restriction).
The result is a ``TaskResult`` with ``task="search"``, ``image_id`` = the query id,
``neighbors`` = the ranked image ids with their cosine similarity, and ``truncated``
when the text was longer than the model's token limit and was cut. Retries, commits and
shutdown are ``consumers/delivery.py``'s, as for image tasks (bad queries get error
results, not dead letters: the dead-letter topic replays into images.v1).

Client: ``search_text`` publishes one ``TextQuery`` and waits for its result
(``imagestream search "a hedgehog"``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from functools import partial
from time import perf_counter
from typing import Any, TypeVar

from faststream.kafka import KafkaBroker

from consumers.delivery import BatchHandler, Delivered
from consumers.fit import publish_result
from consumers.metrics import observe_results
from consumers.records import BadEvent, Record, parse_event
from consumers.results import Stopwatch, error_result, ok_result, since
from consumers.settings import Settings
from consumers.store import VectorStore
from consumers.subscribe import batch_subscriber
from consumers.tasks.base import ImageTask, strip_tenant, vector_id
from schemas.events import Neighbor, TaskResult, TextQuery
from schemas.topics import Topics

TASK = "search"
T = TypeVar("T")
Group = tuple[str, tuple[str, ...] | None]  # (tenant, restricted image ids)


class TextSearch:
    """Subscribes at construction (before the broker starts); serves once ``bind`` ran."""

    def __init__(
        self, broker: KafkaBroker, topics: Topics, settings: Settings, results: Any, stopping: Any
    ) -> None:
        self.results = results
        self._bound: tuple[Any, VectorStore, Executor, Executor] | None = None
        self.handler = BatchHandler(
            TASK, self.process, self._publish, settings.delivery, stopping, model=self._model
        )
        subscriber = batch_subscriber(
            broker,
            topics.queries,
            TASK,
            settings.search,
            settings.kafka,
            listener=self.handler.listener,
            description="Text-to-image search over the CLIP image collection; one TaskResult "
            "(task search, image_id = query_id) per query.",
        )

        async def handle(body: list[TextQuery]) -> None:
            # The annotation documents the payload in AsyncAPI; records are parsed one by
            # one in ``process`` so a bad query becomes an error result.
            msg = broker.context.get_local("message")
            records = [Record.from_consumer_record(r) for r in msg.raw_message]
            with self.handler.inflight.batch(records) as flight:
                handled = await self.handler.handle(msg.consumer, flight)
            if handled is not None:
                delivered = [d.result for d in handled.delivered]
                observe_results(TASK, delivered, len(records), handled.publish_ms)

        subscriber(handle)

    def bind(self, clip: ImageTask[Any, Any], device: Executor, store_pool: Executor) -> None:
        """Serve with the clip task's encoder (device thread) and store (Milvus thread)."""
        self._bound = (clip.encoder, clip.store, device, store_pool)

    def _model(self) -> str | None:
        return self._bound[0].model_name if self._bound else None

    async def _publish(self, task: str, delivered: list[Delivered]) -> None:
        await asyncio.gather(*(publish_result(self.results, d.result) for d in delivered))

    async def process(self, records: Sequence[Record]) -> list[tuple[int, TaskResult]]:
        if self._bound is None:
            raise ConnectionError("text search is not bound to a CLIP encoder yet")
        encoder, store, device, store_pool = self._bound
        started = perf_counter()
        results: dict[int, TaskResult] = {}
        queries: dict[int, TextQuery] = {}
        for index, record in enumerate(records):
            query = parse_event(record, TextQuery)
            if isinstance(query, BadEvent):
                watch = Stopwatch(started)
                results[index] = error_result(
                    TASK,
                    query.event_id,
                    query.image_id,
                    query.error,
                    model=_name(encoder),
                    watch=watch,
                )
            else:
                queries[index] = query
        if queries:
            found = await _answer(encoder, store, device, store_pool, queries, started)
            results.update(found)
        return sorted(results.items())


async def _run(executor: Executor, fn: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(executor, fn)


async def _answer(
    encoder: Any,
    store: VectorStore,
    device: Executor,
    store_pool: Executor,
    queries: dict[int, TextQuery],
    started: float,
) -> dict[int, TaskResult]:
    order = list(queries)
    texts = [queries[i].text for i in order]
    start = perf_counter()
    vectors, cut = await _run(device, partial(encoder.encode_texts_with_truncation, texts))
    encode_ms = since(start)
    start = perf_counter()
    rows = dict(zip(order, vectors, strict=True))
    hits = await _run(store_pool, partial(_search, store, queries, rows))
    search_ms = since(start)
    results = {}
    for i, truncated in zip(order, cut, strict=True):
        watch = Stopwatch(started)
        watch.add("encode", encode_ms)
        watch.add("search", search_ms)
        results[i] = _ok(queries[i], hits[i], truncated, encoder, watch)
    return results


def _search(
    store: VectorStore, queries: dict[int, TextQuery], rows: dict[int, Any]
) -> dict[int, list[Neighbor]]:
    """One batched Milvus search per (tenant, restriction): a filter is per call."""
    groups: dict[Group, list[int]] = defaultdict(list)
    for i, query in queries.items():
        restrict = tuple(query.image_ids) if query.image_ids is not None else None
        groups[(query.collection or "", restrict)].append(i)
    found: dict[int, list[Neighbor]] = {}
    for (tenant, restrict), members in groups.items():
        top_k = max(queries[i].top_k for i in members)
        keys = None if restrict is None else [vector_id(i, tenant) for i in restrict]
        matrix = [rows[i] for i in members]
        hits = store.search(matrix, top_k, tenant=tenant, restrict_ids=keys)
        for i, ranked in zip(members, hits, strict=True):
            found[i] = [
                Neighbor(id=strip_tenant(key, tenant), score=score)
                for key, score in ranked[: queries[i].top_k]
            ]
    return found


def _name(encoder: Any) -> str | None:
    return getattr(encoder, "model_name", None)


def _ok(
    query: TextQuery, neighbors: list[Neighbor], truncated: bool, encoder: Any, watch: Stopwatch
) -> TaskResult:
    return ok_result(
        TASK,
        query.event_id,
        query.query_id,
        model=encoder.model_name,
        dim=encoder.dim,
        watch=watch,
        submitted_at=query.submitted_at,
        collection=query.collection,
        neighbors=neighbors,
        truncated=truncated,
    )


async def search_text(
    settings: Settings,
    text: str,
    *,
    top_k: int = 5,
    tenant: str | None = None,
    image_ids: list[str] | None = None,
    timeout_s: float = 60.0,
) -> TaskResult | None:
    """Publish one ``TextQuery`` and return its result (None when none came in time)."""
    from consumers.ingest import publish, result_reader, wait_for_results

    query = TextQuery(
        event_id=uuid.uuid4().hex,
        query_id=f"q-{uuid.uuid4().hex[:12]}",
        text=text,
        top_k=top_k,
        collection=tenant,
        image_ids=image_ids,
    )
    topic = Topics(settings.kafka.topic_prefix).queries
    async with result_reader(settings) as reader:
        await publish(settings, topic, [(query.query_id, query)])
        expected = {query.event_id: {TASK}}
        found = await wait_for_results(reader, expected, timeout_s, lambda _: None)
    return found[0] if found else None
