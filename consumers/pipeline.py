"""One micro-batch of one image task: parse, fetch, decode, encode, index, search, results.

Each stage is batched where the hardware wants batches (one model call, one upsert,
one search per tenant) and concurrent where it waits (S3 reads, thread-pool decodes).
Blocking work never runs on the event loop: decodes go to a thread pool, the model to
its own single thread, Milvus to another, so Kafka heartbeats keep flowing.
A bad item becomes an error result; only transient, whole-batch failures
(S3 or Milvus unreachable) escape as exceptions, for the caller to retry.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from time import perf_counter
from typing import TypeVar

import torch

from consumers.decode import decode_image
from consumers.encoders.base import Encoder, Vectors
from consumers.errors import ItemError
from consumers.records import BadEvent, Record, parse_image_event
from consumers.results import Stopwatch, error_result, ok_result, since
from consumers.s3 import S3Store, S3Unavailable
from consumers.settings import DecodeSettings
from consumers.store import VectorRow, VectorStore
from schemas.events import ErrorCode, ImageSubmitted, Neighbor, TaskResult

log = logging.getLogger("imagestream.pipeline")

T = TypeVar("T")


@dataclass(frozen=True)
class Pools:
    """Where blocking work runs: many decode threads, one device thread, one store thread."""

    decode: Executor
    device: Executor
    store: Executor


@dataclass
class Job:
    index: int
    event: ImageSubmitted
    watch: Stopwatch
    tensor: torch.Tensor | None = None
    neighbors: list[Neighbor] = field(default_factory=list)

    @property
    def tenant(self) -> str:
        return self.event.collection or ""


def vector_id(image_id: str, tenant: str) -> str:
    """The primary key: the image id, scoped by tenant so tenants never overwrite each other."""
    return f"{tenant}/{image_id}" if tenant else image_id


def _image_id(key: str, tenant: str) -> str:
    return key.removeprefix(f"{tenant}/") if tenant else key


class ImagePipeline:
    def __init__(
        self,
        task: str,
        encoder: Encoder,
        store: VectorStore,
        s3: S3Store,
        decode: DecodeSettings,
        pools: Pools,
    ) -> None:
        self.task = task
        self.encoder = encoder
        self.store = store
        self.s3 = s3
        self.decode_settings = decode
        self.pools = pools

    async def _run(self, executor: Executor, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, fn)

    async def process(self, records: Sequence[Record]) -> list[TaskResult]:
        """Results in input order; events for other tasks yield none."""
        started = perf_counter()
        results: dict[int, TaskResult] = {}
        jobs: list[Job] = []
        for index, record in enumerate(records):
            event = parse_image_event(record)
            if isinstance(event, BadEvent):
                results[index] = self._bad_event_result(event, Stopwatch(started))
            elif not event.tasks or self.task in event.tasks:
                jobs.append(Job(index, event, Stopwatch(started)))
        ready = await self._prepare_all(jobs, results)
        if ready:
            await self._encode_index_search(ready)
            for job in ready:
                results[job.index] = self._ok(job)
        return [results[i] for i in sorted(results)]

    async def _prepare_all(self, jobs: list[Job], results: dict[int, TaskResult]) -> list[Job]:
        outcomes = await asyncio.gather(*(self._prepare(job) for job in jobs))
        ready = []
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, ItemError):
                results[job.index] = self._item_error(job, outcome)
            else:
                ready.append(job)
        return ready

    async def _prepare(self, job: Job) -> ItemError | None:
        """Fetch and decode one image; transient S3 failures propagate."""
        try:
            start = perf_counter()
            data = await self.s3.get(*job.event.bucket_key())
            job.watch.add("fetch", since(start))
            start = perf_counter()
            job.tensor = await self._run(self.pools.decode, partial(self._decode, data))
            job.watch.add("decode", since(start))
        except ItemError as exc:
            return exc
        except S3Unavailable:
            raise
        except Exception as exc:
            # A bug or library failure on one image must not take the batch down with it.
            log.exception("%s: unexpected failure on %s", self.task, job.event.uri)
            return ItemError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}")
        return None

    def _decode(self, data: bytes) -> torch.Tensor:
        return self.encoder.preprocess(decode_image(data, self.decode_settings))

    async def _encode_index_search(self, jobs: list[Job]) -> None:
        tensors = [job.tensor for job in jobs if job.tensor is not None]
        start = perf_counter()
        vectors = await self._run(self.pools.device, partial(self.encoder.encode_images, tensors))
        self._stamp(jobs, "encode", since(start))
        start = perf_counter()
        await self._run(self.pools.store, partial(self.store.upsert, self._rows(jobs, vectors)))
        self._stamp(jobs, "index", since(start))
        start = perf_counter()
        await self._run(self.pools.store, partial(self._search, jobs, vectors))
        self._stamp(jobs, "search", since(start))

    def _rows(self, jobs: list[Job], vectors: Vectors) -> list[VectorRow]:
        return [
            VectorRow(
                id=vector_id(job.event.image_id, job.tenant),
                image_id=job.event.image_id,
                uri=job.event.uri,
                tenant=job.tenant,
                metadata=dict(job.event.metadata),
                vector=vectors[i],
            )
            for i, job in enumerate(jobs)
        ]

    def _search(self, jobs: list[Job], vectors: Vectors) -> None:
        """One batched search per tenant (a filter cannot differ per row of one call)."""
        by_tenant: dict[str, list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            if job.event.top_k > 0:
                by_tenant[job.tenant].append(i)
        for tenant, rows in by_tenant.items():
            top_k = max(jobs[i].event.top_k for i in rows)
            own = [vector_id(jobs[i].event.image_id, tenant) for i in rows]
            hits = self.store.search(vectors[rows], top_k, exclude_ids=own, tenant=tenant)
            for i, found in zip(rows, hits, strict=True):
                jobs[i].neighbors = [
                    Neighbor(id=_image_id(key, tenant), score=score)
                    for key, score in found[: jobs[i].event.top_k]
                ]

    @staticmethod
    def _stamp(jobs: list[Job], stage: str, millis: float) -> None:
        for job in jobs:
            job.watch.add(stage, millis)

    def _ok(self, job: Job) -> TaskResult:
        return ok_result(
            self.task,
            job.event,
            model=self.encoder.model_name,
            dim=self.encoder.dim,
            neighbors=job.neighbors,
            watch=job.watch,
        )

    def _item_error(self, job: Job, error: ItemError) -> TaskResult:
        event = job.event
        return error_result(
            self.task,
            event.event_id,
            event.image_id,
            error,
            model=self.encoder.model_name,
            watch=job.watch,
            reply=event.reply,
            submitted_at=event.submitted_at,
        )

    def _bad_event_result(self, bad: BadEvent, watch: Stopwatch) -> TaskResult:
        return error_result(
            self.task,
            bad.event_id,
            bad.image_id,
            bad.error,
            model=self.encoder.model_name,
            watch=watch,
        )
