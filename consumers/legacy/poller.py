"""The poller half of the legacy adapter: what seed 000's workers did up to the model call.

One loop per legacy model (``legacy.model_names``, enabled tasks only) polls
``GET {POLLING_URL}/{MODEL_NAME}``. An empty answer (no body, ``{}``, ``null``, ``[]``),
an error status or an unreachable backend means no job: sleep ``idle_sleep_s`` plus a
random jitter and poll again. A job ``{"id", "s3_path", "img_callback_url"}`` becomes an
``ImageSubmitted`` (image id = job id, one task, ``reply`` = callback URL, legacy id and
model), published with acks=all and awaited before the next poll of that model. A job
whose image cannot be reached (a refused or malformed ``s3_path``, a download that
keeps failing) becomes an error ``TaskResult`` on the results topic instead, so the
callback sender still answers the backend.

The event id is ``legacy:{model}:{job id}``: a job the backend hands out twice yields the
same event and result ids. The poller keeps no state; see docs/legacy-migration.md
("Crashes") for what a crash between a poll and its publish means.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from consumers.errors import ItemError
from consumers.legacy.publish import publish_until_acked
from consumers.legacy.sources import SourceResolver, SourceUnavailable
from consumers.redact import redact_text, redact_url
from consumers.results import Stopwatch, error_result
from consumers.s3 import S3Unavailable
from consumers.settings import Settings
from schemas.events import MAX_ID_CHARS, ErrorCode, ImageSubmitted, Reply, dump
from schemas.topics import Topics

log = logging.getLogger("imagestream.legacy.poller")
JOBS = Counter(
    "imagestream_legacy_jobs",
    "Legacy jobs polled, by legacy model and outcome (submitted, or the error code).",
    ["model", "outcome"],
)
DOWNLOAD_RETRY_DELAYS_S = (1.0, 2.0)


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

    async def _loop(self, task: str, model: str, stop: asyncio.Event) -> None:
        url = f"{(self.legacy.polling_url or '').rstrip('/')}/{model}"
        while not stop.is_set():
            job = await self.poll(url)
            if job is None:
                pause = self.legacy.idle_sleep_s + random.uniform(0, self.legacy.jitter_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
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
        """Publish the job's event, or its error result; returns once Kafka has it."""
        reply = Reply(callback_url=job.img_callback_url, legacy_id=job.id, model_name=model)
        event_id = f"legacy:{model}:{job.id}"
        try:
            uri = await self._resolve(job, model)
        except ItemError as exc:
            log.warning("legacy %s job %s: %s", model, job.id, exc.message)
            JOBS.labels(model, exc.code.value).inc()
            result = error_result(
                task, event_id, job.id, exc, model=None, watch=Stopwatch(), reply=reply
            )
            await publish_until_acked(
                self.producer, self.topics.results, job.id, dump(result), stop
            )
            return
        event = ImageSubmitted(
            event_id=event_id,
            image_id=job.id,
            uri=uri,
            tasks=[task],
            top_k=self.legacy.result_ids - 1,  # the image's own id fills the first place
            reply=reply,
        )
        await publish_until_acked(self.producer, self.topics.images, job.id, dump(event), stop)
        JOBS.labels(model, "submitted").inc()
        log.debug("legacy %s job %s -> %s", model, job.id, uri)

    async def _resolve(self, job: LegacyJob, model: str) -> str:
        if not job.s3_path:
            raise ItemError(ErrorCode.INVALID_EVENT, "the job has no s3_path")
        for delay in (*DOWNLOAD_RETRY_DELAYS_S, None):
            try:
                return await self.sources.resolve(job.s3_path, model, job.id)
            except (SourceUnavailable, S3Unavailable) as exc:
                if delay is None:
                    raise ItemError(ErrorCode.UNAVAILABLE, str(exc)) from exc
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")
