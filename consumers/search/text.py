"""Text-to-image search (seed 002's ``/getBestPictures``, seed 003's goal), both sides.

Consumer: ``TextSearch`` subscribes to ``queries.v1`` in its own group
(``imagestream-search``) beside the clip task, whose loaded CLIP model and Milvus
collection it uses: texts are embedded by the model that embedded the images. A batch of
queries is one text-encoder call and one Milvus search per (tenant, id restriction) and
list. ``TextQuery.mode`` picks the lists: ``vector`` the CLIP similarity alone,
``text`` BM25 over the caption and OCR texts, ``hybrid`` all three fused
(``consumers/search/fusion.py``). The result is a ``TaskResult`` with ``task="search"``,
``image_id`` = the query id, ``neighbors`` = the ranked image ids with their score (and,
for text and hybrid, the lists that found each), and ``truncated`` when the text was
longer than the CLIP model's token limit and was cut. Retries, commits and
shutdown are ``consumers/worker/delivery.py``'s, as for image tasks (bad queries get error
results, not dead letters: the dead-letter topic replays into images.v1).

The client side, ``search_text``, is ``consumers/client/search.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from time import perf_counter
from typing import Any

from faststream.kafka import KafkaRouter

from consumers.config.settings import Settings
from consumers.ops.threads import run_in
from consumers.pipeline.records import BadEvent, Record, parse_event
from consumers.pipeline.results import Stopwatch, error_result, ok_result, since
from consumers.search.fusion import CLIP_LIST, Hit, Lists, fuse, group_queries, word_lists
from consumers.tasks.base import ImageTask, strip_tenant, vector_id
from consumers.vectorstore.store import VectorStore
from consumers.vectorstore.text_store import TextStore
from consumers.worker.delivery import BatchHandler, record_handled
from consumers.worker.publisher import ResultPublisher
from consumers.worker.subscribe import PolledBatch, batch_subscriber
from schemas.events import SEARCH_TASK, Neighbor, TaskResult, TextQuery
from schemas.topics import Topics

BM25_MODEL = "bm25"


@dataclass(frozen=True)
class _Bound:
    """What answers queries: the clip task's encoder and store, the text stores, and the
    threads they run on (the device thread, the Milvus thread)."""

    encoder: Any
    store: VectorStore
    texts: dict[str, TextStore]
    device: Executor
    store_pool: Executor


class TextSearch:
    """Subscribes at construction (before the broker starts); serves once ``bind`` ran."""

    def __init__(
        self,
        router: KafkaRouter,
        topics: Topics,
        settings: Settings,
        publisher: ResultPublisher,
        stopping: asyncio.Event,
    ) -> None:
        self.settings = settings.search
        self._bound: _Bound | None = None
        self.handler = BatchHandler(
            SEARCH_TASK,
            self.process,
            publisher.results_only,
            settings.delivery,
            stopping,
            self._model,
        )
        subscriber = batch_subscriber(
            router,
            topics.queries,
            SEARCH_TASK,
            settings.search,
            settings.kafka,
            model=TextQuery,
            listener=self.handler.listener,
            description="Text-to-image search (modes vector, text, hybrid); one TaskResult "
            "(task search, image_id = query_id) per query.",
        )
        subscriber(self.handle)

    async def handle(self, batch: PolledBatch[TextQuery]) -> None:
        with self.handler.inflight.batch(batch.records) as flight:
            handled = await self.handler.handle(batch.consumer, flight)
        if handled is not None:
            record_handled(SEARCH_TASK, handled, len(batch.records))

    def bind(
        self,
        clip: ImageTask[Any, Any],
        device: Executor,
        store_pool: Executor,
        texts: Mapping[str, TextStore],
    ) -> None:
        """Serve with the clip task's encoder (device thread) and store, and the caption
        and OCR text stores (Milvus thread)."""
        self._bound = _Bound(clip.encoder, clip.store, dict(texts), device, store_pool)

    def _model(self) -> str | None:
        return self._bound.encoder.model_name if self._bound else None

    async def process(self, records: Sequence[Record]) -> list[tuple[int, TaskResult]]:
        if self._bound is None:
            raise ConnectionError("text search is not bound to a CLIP encoder yet")
        started = perf_counter()
        results: dict[int, TaskResult] = {}
        queries: dict[int, TextQuery] = {}
        for index, record in enumerate(records):
            query = parse_event(record, TextQuery)
            if isinstance(query, BadEvent):
                watch = Stopwatch(started)
                results[index] = error_result(
                    SEARCH_TASK,
                    query.event_id,
                    query.image_id,
                    query.error,
                    model=_name(self._bound.encoder),
                    watch=watch,
                )
            else:
                queries[index] = query
        if queries:
            results.update(await self._answer(self._bound, queries, started))
        return sorted(results.items())

    async def _answer(
        self, bound: _Bound, queries: dict[int, TextQuery], started: float
    ) -> dict[int, TaskResult]:
        by_vector = {i: q for i, q in queries.items() if q.mode != "text"}
        start = perf_counter()
        vectors, cut = await _embed(bound, by_vector)
        encode_ms = since(start)
        start = perf_counter()
        depth = self.settings.fusion_depth
        lists = await run_in(bound.store_pool, partial(_lists, bound, queries, vectors, depth))
        search_ms = since(start)
        results = {}
        for i, query in queries.items():
            watch = Stopwatch(started)
            watch.add("encode", encode_ms if i in by_vector else 0.0)
            watch.add("search", search_ms)
            if query.mode == "vector":
                neighbors = [Neighbor(id=key, score=score) for key, score in lists[i][CLIP_LIST]]
            else:
                neighbors = fuse(query, lists[i], self.settings.rrf_k)
            results[i] = _ok(query, neighbors, cut.get(i, False), bound.encoder, watch)
        return results


async def _embed(
    bound: _Bound, queries: dict[int, TextQuery]
) -> tuple[dict[int, Any], dict[int, bool]]:
    """CLIP text vectors of the queries that need one, and whether each text was cut."""
    if not queries:
        return {}, {}
    order = list(queries)
    texts = [queries[i].text for i in order]
    encode = bound.encoder.encode_texts_with_truncation
    vectors, cut = await run_in(bound.device, partial(encode, texts))
    return dict(zip(order, vectors, strict=True)), dict(zip(order, cut, strict=True))


def _lists(
    bound: _Bound, queries: dict[int, TextQuery], vectors: dict[int, Any], depth: int
) -> dict[int, Lists]:
    """Every ranked list each query's mode reads: clip (vector, hybrid), caption and ocr
    (text, hybrid)."""
    by_words = {i: q for i, q in queries.items() if q.mode != "vector"}
    found: dict[int, Lists] = {i: {} for i in queries}
    found.update(word_lists(bound.texts, by_words, depth))
    by_vector = {i: queries[i] for i in vectors}
    for i, hits in _search(bound.store, by_vector, vectors, depth).items():
        found[i][CLIP_LIST] = hits
    return found


def _search(
    store: VectorStore, queries: dict[int, TextQuery], rows: dict[int, Any], depth: int
) -> dict[int, list[Hit]]:
    """One batched Milvus search per (tenant, restriction): a filter is per call. A
    hybrid query's list is read ``depth`` deep, a vector query's ``top_k``."""
    found: dict[int, list[Hit]] = {}
    for (tenant, restrict), members in group_queries(queries).items():
        limits = {i: _limit(queries[i], depth) for i in members}
        keys = None if restrict is None else [vector_id(i, tenant) for i in restrict]
        matrix = [rows[i] for i in members]
        hits = store.search(matrix, max(limits.values()), tenant=tenant, restrict_ids=keys)
        for i, ranked in zip(members, hits, strict=True):
            found[i] = [(strip_tenant(key, tenant), score) for key, score in ranked[: limits[i]]]
    return found


def _limit(query: TextQuery, depth: int) -> int:
    return query.top_k if query.mode == "vector" else max(query.top_k, depth)


def _name(encoder: Any) -> str | None:
    return getattr(encoder, "model_name", None)


def _ok(
    query: TextQuery, neighbors: list[Neighbor], truncated: bool, encoder: Any, watch: Stopwatch
) -> TaskResult:
    # Text mode ranks by BM25 alone: no model, no vector.
    words_only = query.mode == "text"
    return ok_result(
        SEARCH_TASK,
        query.event_id,
        query.query_id,
        model=BM25_MODEL if words_only else encoder.model_name,
        dim=0 if words_only else encoder.dim,
        watch=watch,
        submitted_at=query.submitted_at,
        collection=query.collection,
        neighbors=neighbors,
        truncated=None if words_only else truncated,
    )
