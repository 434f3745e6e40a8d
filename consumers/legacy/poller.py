"""The poller half of the legacy adapter: what seed 000's workers did up to the model call.

One loop per legacy model (``legacy.model_names``, enabled tasks only) polls
``GET {POLLING_URL}/{MODEL_NAME}``. An empty answer (no body, ``{}``, ``null``, ``[]``),
an error status or an unreachable backend means no job: sleep ``idle_sleep_s`` plus a
random jitter and poll again. A job ``{"id", "s3_path", "img_callback_url"}`` becomes an
``ImageSubmitted`` (image id = job id, one task, ``reply`` = callback URL, legacy id and
model), published with acks=all and awaited before the next poll of that model. A job
whose image cannot be had (a refused or malformed ``s3_path``, a missing file) becomes an
error ``TaskResult`` on the results topic instead, so the callback sender still answers
the backend. A job whose source is down (the download host, or S3 for staging) waits in
a task of its own, retried with backoff for ``source_wait_s`` (15 minutes by default)
before it is answered ``unavailable``, while polling goes on; at most
``source_waiting_jobs`` wait at once, and polls pause while the room is full.

The event id is ``legacy:{model}:{job id}``: a job the backend hands out twice yields the
same event and result ids. The poller keeps no state; see docs/legacy-migration.md
("Crashes") for what a crash between a poll and its publish means.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from consumers.config.settings import Settings
from consumers.legacy.backoff import backoff_s, pause
from consumers.legacy.publish import publish_until_acked
from consumers.legacy.sources import SourceResolver, SourceUnavailable
from consumers.ops.redact import redact_text, redact_url
from consumers.pipeline.item_errors import ItemError
from consumers.pipeline.results import Stopwatch, error_result
from consumers.pipeline.s3 import S3Unavailable
from schemas.events import MAX_ID_CHARS, ErrorCode, ImageSubmitted, Reply, dump
from schemas.topics import Topics

log = logging.getLogger("imagestream.legacy.poller")
JOBS = Counter(
    "imagestream_legacy_jobs",
    "Legacy jobs polled, by legacy model and outcome (submitted, or the error code).",
    ["model", "outcome"],
)


class LegacyJob(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    # Room is left for the "legacy:{model}:" prefix of the event id.
    id: str = Field(min_length=1, max_length=MAX_ID_CHARS - 100)
    s3_path: str = ""
    img_callback_url: str = Field(min_length=1, max_length=4096)

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        # The old workers did str(response_data['id']): integer ids were common.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def parse_job(body: bytes) -> LegacyJob | None:
    """``None`` for "no job"; raises ``ValueError`` for a job that cannot be answered."""
    if not body.strip():
        return None
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not doc:
        return None
    try:
        return LegacyJob.model_validate(doc)
    except ValidationError as exc:
        raise ValueError(f"not a job: {exc.errors()[:2]}") from exc


@dataclass(frozen=True)
class _Job:
    """A polled job, with the task and legacy model it was polled for."""

    task: str
    model: str
    job: LegacyJob

    @property
    def event_id(self) -> str:
        return f"legacy:{self.model}:{self.job.id}"

    @property
    def reply(self) -> Reply:
        job = self.job
        return Reply(callback_url=job.img_callback_url, legacy_id=job.id, model_name=self.model)


class Poller:
    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer,
        sources: SourceResolver,
        http: aiohttp.ClientSession,
    ) -> None:
        self.settings = settings
        self.legacy = settings.legacy
        self.topics = Topics(settings.kafka.topic_prefix)
        self.producer = producer
        self.sources = sources
        self.http = http
        self._down: set[str] = set()
        # Jobs whose source is down, each retried in its own task (by event id).
        self._waiting: dict[str, asyncio.Task[None]] = {}
        self._room = asyncio.Semaphore(self.legacy.source_waiting_jobs)

    def models(self) -> dict[str, str]:
        """Task -> legacy model name, for the tasks this deployment runs."""
        enabled = set(self.settings.enabled_tasks())
        return {t: m for t, m in self.legacy.model_names.items() if t in enabled}

    async def run(self, stop: asyncio.Event) -> None:
        if not self.legacy.polling_url:
            raise ValueError("legacy.polling_url is not set (IMAGESTREAM_LEGACY__POLLING_URL)")
        loops = [self._loop(task, model, stop) for task, model in self.models().items()]
        log.info(
            "polling %s for %s",
            redact_url(self.legacy.polling_url or ""),
            ", ".join(self.models().values()),
        )
        await asyncio.gather(*loops)
        # Stopping: the waiting jobs end at their next pause (their backend hands them
        # out again once they are not called back).
        await asyncio.gather(*self._waiting.values(), return_exceptions=True)

    async def _loop(self, task: str, model: str, stop: asyncio.Event) -> None:
        url = f"{(self.legacy.polling_url or '').rstrip('/')}/{model}"
        while not stop.is_set():
            job = await self.poll(url)
            if job is None:
                await pause(
                    stop, self.legacy.idle_sleep_s + random.uniform(0, self.legacy.jitter_s)
                )
                continue
            await self.submit(task, model, job, stop)

    async def poll(self, url: str) -> LegacyJob | None:
        try:
            async with self.http.get(url) as response:
                body = await response.read()
                if response.status != 200:
                    self._failing(url, f"HTTP {response.status}")
                    return None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._failing(url, redact_text(str(exc)) or type(exc).__name__)
            return None
        if url in self._down:
            self._down.discard(url)
            log.info("poll %s answers again", redact_url(url))
        try:
            return parse_job(body)
        except ValueError as exc:
            # Without an id and a callback URL there is no one to answer: say it loudly.
            shown = redact_text(repr(body[:500]))  # its s3_path may be presigned
            log.error("poll %s: unusable job dropped (%s): %s", redact_url(url), exc, shown)
            return None

    def _failing(self, url: str, why: str) -> None:
        """Once per outage at WARNING: an idle poller retries every few seconds."""
        if url in self._down:
            log.debug("poll %s still failing: %s", redact_url(url), why)
            return
        self._down.add(url)
        shown = redact_url(url)
        log.warning("poll %s failed: %s (retrying quietly until it answers)", shown, why)

    async def submit(self, task: str, model: str, job: LegacyJob, stop: asyncio.Event) -> None:
        """Publish the job's event, or its error result; returns once Kafka has it, or,
        when its source is down, once the job is waiting for it in a task of its own."""
        job_in = _Job(task, model, job)
        if job_in.event_id in self._waiting:
            log.debug("legacy %s job %s handed out again: already waiting", model, job.id)
            return
        try:
            uri = await self._resolve(job_in)
        except (SourceUnavailable, S3Unavailable) as exc:
            log.warning(
                "legacy %s job %s: %s; retrying for up to %.0f s",
                model, job.id, exc, self.legacy.source_wait_s,
            )  # fmt: skip
            JOBS.labels(model, "waiting").inc()
            await self._room.acquire()  # a full waiting room holds the polls back
            waiting = asyncio.create_task(self._wait_for_source(job_in, stop))
            self._waiting[job_in.event_id] = waiting
            waiting.add_done_callback(lambda _: self._left(job_in.event_id))
            return
        except ItemError as exc:
            await self._answer_error(job_in, exc, stop)
            return
        await self._publish(job_in, uri, stop)

    def _left(self, event_id: str) -> None:
        self._waiting.pop(event_id, None)
        self._room.release()

    async def _wait_for_source(self, job_in: _Job, stop: asyncio.Event) -> None:
        """Retry with backoff until the source answers or ``source_wait_s`` is spent."""
        legacy, loop = self.legacy, asyncio.get_running_loop()
        deadline = loop.time() + legacy.source_wait_s
        for attempt in itertools.count(1):
            delay = backoff_s(attempt, legacy.source_backoff_s, legacy.source_backoff_max_s)
            left = deadline - loop.time()
            if left <= 0:
                why = f"the image source was unavailable for {legacy.source_wait_s:.0f} s"
                await self._answer_error(job_in, ItemError(ErrorCode.UNAVAILABLE, why), stop)
                return
            if await pause(stop, min(delay, left)):
                log.warning(
                    "stopping: legacy job %s was still waiting for its source", job_in.job.id
                )
                return
            try:
                uri = await self._resolve(job_in)
            except (SourceUnavailable, S3Unavailable) as exc:
                log.debug("legacy job %s: source still unavailable: %s", job_in.job.id, exc)
                continue
            except ItemError as exc:
                await self._answer_error(job_in, exc, stop)
                return
            log.info("legacy job %s: its source answers again", job_in.job.id)
            await self._publish(job_in, uri, stop)
            return

    async def _answer_error(self, job_in: _Job, exc: ItemError, stop: asyncio.Event) -> None:
        job, model = job_in.job, job_in.model
        log.warning("legacy %s job %s: %s", model, job.id, exc.message)
        JOBS.labels(model, exc.code.value).inc()
        result = error_result(
            job_in.task, job_in.event_id, job.id, exc, model=None, watch=Stopwatch(),
            reply=job_in.reply,
        )  # fmt: skip
        await publish_until_acked(self.producer, self.topics.results, job.id, dump(result), stop)

    async def _publish(self, job_in: _Job, uri: str, stop: asyncio.Event) -> None:
        job = job_in.job
        event = ImageSubmitted(
            event_id=job_in.event_id,
            image_id=job.id,
            uri=uri,
            tasks=[job_in.task],
            top_k=self.legacy.result_ids - 1,  # the image's own id fills the first place
            reply=job_in.reply,
        )
        await publish_until_acked(self.producer, self.topics.images, job.id, dump(event), stop)
        JOBS.labels(job_in.model, "submitted").inc()
        log.debug("legacy %s job %s -> %s", job_in.model, job.id, uri)

    async def _resolve(self, job_in: _Job) -> str:
        job = job_in.job
        if not job.s3_path:
            raise ItemError(ErrorCode.INVALID_EVENT, "the job has no s3_path")
        return await self.sources.resolve(job.s3_path, job_in.model, job.id)
