"""One micro-batch of one image task: parse, fetch, decode, then the task's own steps.

Stages are batched where the hardware wants batches (one model call, one upsert, one
search) and concurrent where they wait (S3 reads, thread-pool decodes). Blocking work
never runs on the event loop: decodes go to a thread pool, the model to its own single
thread (on a CPU, to the CPU workers through two feed threads), Milvus to another, so
Kafka heartbeats keep flowing. A bad item becomes an
error result; only transient, whole-batch failures (S3 or Milvus unreachable) escape
as exceptions, for the caller to retry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from time import perf_counter
from typing import Any, TypeVar

from consumers.config.settings import DecodeSettings
from consumers.models.cpu_workers import worker_starts
from consumers.ops.threads import run_in
from consumers.pipeline.decode import decode_and_prepare
from consumers.pipeline.fetch import fetch_staged
from consumers.pipeline.item_errors import ItemError
from consumers.pipeline.pools import Pools
from consumers.pipeline.records import BadEvent, Record, parse_image_event
from consumers.pipeline.results import Stopwatch, error_result, ok_result, since
from consumers.pipeline.s3 import S3Store, S3Unavailable
from consumers.tasks.base import ImageTask, Job, stamp
from consumers.vectorstore.keys import StagingAreas
from consumers.vectorstore.milvus_errors import StoreRejected
from consumers.worker.fit import clean
from schemas.events import ErrorCode, TaskResult, utcnow

log = logging.getLogger("imagestream.pipeline")
T = TypeVar("T")
R = TypeVar("R")
Step = Callable[["Job[Any]"], Awaitable[None]]


@dataclass(frozen=True)
class Prepared:
    """A batch fetched and decoded: error results so far, and the jobs ready to encode.
    Single use: ``complete`` fills in the jobs' outputs and timings."""

    results: dict[int, TaskResult]
    jobs: list[Job[Any]]
    ready_at: float


class ImagePipeline:
    """One task's batches. Built before the subscriber, and so before its model is
    loaded: ``bind`` hands it the task once the model and its stores are ready, which is
    before the broker starts and delivers the first batch."""

    def __init__(
        self,
        name: str,
        s3: S3Store,
        decode: DecodeSettings,
        pools: Pools,
        staging: StagingAreas | None = None,
    ) -> None:
        self.name = name
        self.s3 = s3
        self.decode_settings = decode
        self.pools = pools
        self.staging = staging  # uploads staged per tenant: an event reads only its own
        self._task: ImageTask[Any, Any] | None = None

    def bind(self, task: ImageTask[Any, Any]) -> None:
        self._task = task

    @property
    def task(self) -> ImageTask[Any, Any]:
        if self._task is None:
            raise RuntimeError(f"the {self.name} pipeline has no model yet (start() loads it)")
        return self._task

    def model_name(self) -> str | None:
        return self._task.model_name if self._task is not None else None

    def close(self) -> None:
        """Release what the task opened itself (its stores are closed by their opener)."""
        if self._task is not None:
            self._task.close()

    async def process_indexed(self, records: Sequence[Record]) -> list[tuple[int, TaskResult]]:
        """(index into ``records``, result) in input order; events for other tasks and
        repeats of an event id already in the batch (same result id) yield none."""
        return await self.complete(await self.prepare(records))

    async def prepare(self, records: Sequence[Record], *, decode: bool = True) -> Prepared:
        """The I/O half: parse and fetch, and decode too unless ``decode`` is false. It
        can run while the previous batch is on the device (``consumers/worker/prefetch.py``)."""
        started = perf_counter()
        results: dict[int, TaskResult] = {}
        jobs: list[Job[Any]] = []
        seen: set[str] = set()
        for index, record in enumerate(records):
            event = parse_image_event(record)
            if isinstance(event, BadEvent):
                results[index] = self._bad_event_result(event, Stopwatch(started))
            elif event.event_id in seen:
                continue
            elif not event.tasks or self.name in event.tasks:
                seen.add(event.event_id)
                jobs.append(Job(index, event, Stopwatch(started)))
        ready = await self._each(jobs, results, self._fetch_and_decode if decode else self._fetch)
        return Prepared(results, ready, perf_counter())

    async def complete(
        self, batch: Prepared, device_done: Callable[[], None] = lambda: None
    ) -> list[tuple[int, TaskResult]]:
        """The device half: decode what is not yet, one model call, store and search.
        ``device_done`` is called as the model call ends (``consumers/worker/prefetch.py``)."""
        results = dict(batch.results)
        stamp(batch.jobs, "wait", since(batch.ready_at))
        jobs = await self._each(batch.jobs, results, self._decode)
        if jobs:
            refused = await self._infer_and_store(jobs, device_done)
            completed_at = utcnow()  # one stamp: a batch's results complete together
            for job in jobs:
                error = refused.get(job.index)
                if error is None:
                    results[job.index] = self._ok(job, completed_at)
                else:
                    results[job.index] = self._item_error(job, error)
        return sorted(results.items())

    async def _each(
        self, jobs: list[Job[Any]], results: dict[int, TaskResult], step: Step
    ) -> list[Job[Any]]:
        """``step`` on every job at once; the jobs it succeeded on, the others' errors
        in ``results``. A transient S3 failure propagates, for the batch to be retried."""
        # return_exceptions: on an S3 outage, let every fetch finish before re-raising;
        # plain gather would leave the others running while the batch is retried.
        outcomes = await asyncio.gather(
            *(self._guarded(step, job) for job in jobs), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, ItemError):
                raise outcome  # ItemErrors are returned, one per bad item
        ready = []
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, ItemError):
                results[job.index] = self._item_error(job, outcome)
            else:
                ready.append(job)
        return ready

    async def _guarded(self, step: Step, job: Job[Any]) -> ItemError | None:
        try:
            await step(job)
        except ItemError as exc:
            return exc
        except S3Unavailable:
            raise
        except Exception as exc:
            # A bug or library failure on one image must not take the batch down with it.
            log.exception("%s: unexpected failure on %s", self.name, job.event.uri)
            return ItemError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}")
        return None

    async def _fetch_and_decode(self, job: Job[Any]) -> None:
        await self._fetch(job)
        await self._decode(job)

    async def _fetch(self, job: Job[Any]) -> None:
        start = perf_counter()
        bucket, key = job.event.bucket_key()
        job.data = await fetch_staged(self.s3, self.staging, bucket, key, job.tenant)
        job.watch.add("fetch", since(start))

    async def _decode(self, job: Job[Any]) -> None:
        if job.data is None:  # decoded ahead (prefetch) already
            return
        start = perf_counter()
        data, job.data = job.data, None
        min_side = self.task.encoder.min_input_side
        decode = partial(
            decode_and_prepare, data, self.decode_settings, self.task.prepare, min_side
        )
        job.prepared = await run_in(self.pools.decode, decode)
        job.watch.add("decode", since(start))

    async def _infer_and_store(
        self, jobs: list[Job[Any]], device_done: Callable[[], None]
    ) -> dict[int, ItemError]:
        """One model call, then the store step; the errors of jobs whose rows Milvus refused."""
        prepared = [job.prepared for job in jobs]
        queued = perf_counter()
        outputs, started = await run_in(
            self.pools.model(self.task), partial(_timed, self.task.infer, prepared)
        )
        # Behind the previous batch's model call (prefetch decode or fetch) is waiting.
        stamp(jobs, "wait", (started - queued) * 1000)
        stamp(jobs, "encode", since(started))
        device_done()
        try:
            await self._store(jobs, outputs)
            return {}
        except StoreRejected as exc:
            if len(jobs) == 1:
                return {jobs[0].index: _refused(exc)}
            log.warning(
                "%s: Milvus refused a batch of %d, storing each: %s", self.name, len(jobs), exc
            )
        # One row (or one tenant's search) was refused: the store step for each job on its
        # own, with the outputs in hand, so the model does not run again for the others
        # (a whole-batch failure would be split and re-run by consumers/worker/delivery.py).
        refused = {}
        for job, output in zip(jobs, outputs, strict=True):
            try:
                await self._store([job], [output])
            except StoreRejected as exc:
                refused[job.index] = _refused(exc)
        return refused

    async def _store(self, jobs: list[Job[Any]], outputs: list[Any]) -> None:
        await run_in(self.pools.store, partial(self.task.store_and_search, jobs, outputs))

    def _ok(self, job: Job[Any], completed_at: datetime) -> TaskResult:
        event = job.event
        return ok_result(
            self.name,
            event.event_id,
            event.image_id,
            model=self.task.model_name,
            dim=self.task.dim,
            watch=job.watch,
            reply=event.reply,
            submitted_at=event.submitted_at,
            completed_at=completed_at,
            collection=event.collection,
            **job.fields,
        )

    def _item_error(self, job: Job[Any], error: ItemError) -> TaskResult:
        event = job.event
        return error_result(
            self.name,
            event.event_id,
            event.image_id,
            error,
            model=self.task.model_name,
            watch=job.watch,
            reply=event.reply,
            submitted_at=event.submitted_at,
            collection=event.collection,
        )

    def _bad_event_result(self, bad: BadEvent, watch: Stopwatch) -> TaskResult:
        return error_result(
            self.name,
            bad.event_id,
            bad.image_id,
            bad.error,
            model=self.task.model_name,
            watch=watch,
        )


def _refused(exc: StoreRejected) -> ItemError:
    return ItemError(
        ErrorCode.INVALID_EVENT, clean(f"Milvus refused this image's row: {exc}", 1000)
    )


def _timed(fn: Callable[[T], R], arg: T) -> tuple[R, float]:
    """``fn(arg)`` and the ``perf_counter`` at which its model work started: in this
    thread, or on the CPU workers once the shards of the call before were taken."""
    started = perf_counter()
    with worker_starts() as starts:
        result = fn(arg)
    return result, min(starts, default=started)
