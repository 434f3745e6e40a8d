"""The callback half of the legacy adapter: results with a ``reply`` back to their backend.

Its own consumer group on ``results.v1``. For every result that carries a ``reply`` it
sends what seed 000's workers sent: ``GET img_callback_url`` with the JSON body
``{"result": [[ids...]]}``, the ids as the old ChromaDB query returned them (the image's
own id first, then its nearest neighbours, ``legacy.result_ids`` in all). An error result
is sent as ``{"result": [[]], "error": {"code": ..., "message": ...}}``: the shape old
clients parse, with no ids (a real answer always holds at least the image's own id).

5xx answers, 408/429, timeouts and connection errors are retried with exponential
backoff; other answers (4xx, redirects) and URLs the SSRF guard refuses are not. A
callback that still fails is published, with its body, as a ``CallbackFailed`` on
``results.v1.callbacks.failed``, where the adapter's re-send loop (``resend.py``) picks
it up and sends it again until the backend answers. Offsets are committed only after
every callback of a batch was delivered or recorded there, so a crash means redelivery
(at-least-once callbacks), never a lost one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import Counter
from pydantic import ValidationError

from consumers.config.settings import LegacySettings, Settings
from consumers.legacy.backoff import backoff_s
from consumers.legacy.publish import publish_until_acked
from consumers.legacy.ssrf import AddressGuard, Refused, check_url
from consumers.ops.redact import redact_text, redact_url
from consumers.worker.kafka import client_kwargs, started
from schemas.events import CallbackFailed, ErrorCode, Status, TaskResult, dump
from schemas.topics import Topics

log = logging.getLogger("imagestream.legacy.callbacks")
CALLBACKS_GROUP = "imagestream-legacy-callbacks"  # the default, after the topic prefix
CALLBACKS = Counter(
    "imagestream_legacy_callbacks",
    "Legacy callbacks by outcome: delivered, or failed (recorded on the failed topic).",
    ["outcome"],
)
_FACE_SUFFIX = re.compile(r"#\d+$")
_RETRIABLE_STATUS = frozenset({408, 429})
_REMEMBERED_RESULTS = 10_000


def legacy_ids(result: TaskResult, limit: int) -> list[str]:
    """Own id first, then neighbour image ids, best first, without repeats."""
    if result.faces is not None:
        # The old face worker kept one face per image and answered with image ids.
        neighbours = result.faces[0].neighbors if result.faces else []
        found = [getattr(n, "image_id", None) or _FACE_SUFFIX.sub("", n.id) for n in neighbours]
    else:
        found = [n.id for n in result.neighbors]
    ids = [result.image_id]
    for image_id in found:
        if image_id not in ids:
            ids.append(image_id)
    return ids[:limit]


def legacy_body(result: TaskResult, limit: int) -> dict[str, Any]:
    if result.status is Status.ERROR or result.faces == []:
        error = result.error
        code = error.code.value if error else ErrorCode.NO_FACE.value
        message = error.message if error else "no face was found in the image"
        return {"result": [[]], "error": {"code": code, "message": message}}
    return {"result": [legacy_ids(result, limit)]}


def callback_worst_s(legacy: LegacySettings) -> float:
    """One callback's longest run: every attempt timing out, every pause at +20%."""
    pauses = sum(
        min(legacy.callback_backoff_s * 2.0**n, legacy.callback_backoff_max_s)
        for n in range(legacy.callback_attempts - 1)
    )
    return legacy.callback_attempts * legacy.http_timeout_s + 1.2 * pauses


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    attempts: int
    error: str = ""
    retriable: bool = True  # False: the target refused it for good; sending again won't help


class CallbackClient:
    """Sends one callback with retries; never raises for the target's failures."""

    def __init__(
        self, legacy: LegacySettings, http: aiohttp.ClientSession, guard: AddressGuard
    ) -> None:
        self.legacy = legacy
        self.http = http
        self.guard = guard

    async def send(self, url: str, body: dict[str, Any], attempts: int | None = None) -> Outcome:
        """Up to ``attempts`` requests (default ``legacy.callback_attempts``)."""
        legacy = self.legacy
        attempts = attempts or legacy.callback_attempts
        error = ""
        for attempt in range(1, attempts + 1):
            try:
                target = check_url(url, self.guard)
                async with self.http.get(target, json=body, allow_redirects=False) as response:
                    if 200 <= response.status < 300:
                        return Outcome(True, attempt)
                    error = f"HTTP {response.status}"
                    if response.status < 500 and response.status not in _RETRIABLE_STATUS:
                        return Outcome(False, attempt, f"{error} (not retried)", retriable=False)
            except Refused as exc:
                return Outcome(False, attempt - 1, f"callback URL refused: {exc}", retriable=False)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = redact_text(repr(exc))  # aiohttp's errors repeat the URL
            if attempt < attempts:
                first, most = legacy.callback_backoff_s, legacy.callback_backoff_max_s
                await asyncio.sleep(backoff_s(attempt, first, most))
        return Outcome(False, attempts, error)


class CallbackSender:
    def __init__(
        self, settings: Settings, client: CallbackClient, producer: AIOKafkaProducer
    ) -> None:
        self.settings = settings
        self.legacy = settings.legacy
        self.topics = Topics(settings.kafka.topic_prefix)
        self.group_id = self.legacy.group_id or self.topics.group(CALLBACKS_GROUP)
        self.client = client
        self.producer = producer
        self._slots = asyncio.Semaphore(self.legacy.callback_concurrency)
        # Identical callbacks already made (result id + URL + body). Only spares repeats
        # within one process: after a restart a redelivered result is sent again.
        self._done: OrderedDict[str, None] = OrderedDict()

    def _consumer(self) -> AIOKafkaConsumer:
        # aiokafka itself, not a FastStream subscriber: each poll is sized to one wave of
        # callback_concurrency sends and committed only once every send of the wave was
        # delivered or parked, with a poll interval derived from callback_worst_s.
        kafka = self.settings.kafka
        return AIOKafkaConsumer(
            self.topics.results,
            **client_kwargs(kafka),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset=kafka.auto_offset_reset,
            session_timeout_ms=kafka.session_timeout_ms,
            heartbeat_interval_ms=kafka.heartbeat_interval_ms,
            # Against a target that accepts and never answers, a batch takes
            # callback_worst_s: the group must not drop the sender meanwhile.
            max_poll_interval_ms=max(
                kafka.max_poll_interval_ms, round(1500 * callback_worst_s(self.legacy))
            ),
        )

    async def run(self, stop: asyncio.Event) -> None:
        async with started(self._consumer()) as consumer:
            log.info("legacy callbacks for %s, group %s", self.topics.results, self.group_id)
            while not stop.is_set():
                # One wave of callbacks per batch: see _consumer().
                slots = self.legacy.callback_concurrency
                batches = await consumer.getmany(timeout_ms=1000, max_records=slots)
                if not batches:
                    continue
                await self.handle([r.value or b"" for rs in batches.values() for r in rs], stop)
                offsets = {tp: records[-1].offset + 1 for tp, records in batches.items()}
                try:
                    await consumer.commit(offsets)
                except KafkaError as exc:
                    log.warning("commit failed, the batch will be redelivered: %r", exc)

    async def handle(self, values: list[bytes], stop: asyncio.Event) -> None:
        pending: dict[str, tuple[TaskResult, dict[str, Any]]] = {}
        for value in values:
            try:
                result = TaskResult.model_validate_json(value)
            except ValidationError:
                continue  # not a result this adapter can answer; the consumers log bad input
            if result.reply is None:
                continue
            body = legacy_body(result, self.legacy.result_ids)
            key = json.dumps([result.result_id, result.reply.callback_url, body], sort_keys=True)
            if key not in self._done:
                pending[key] = (result, body)
        await asyncio.gather(*(self._deliver(k, r, b, stop) for k, (r, b) in pending.items()))

    async def _deliver(
        self, key: str, result: TaskResult, body: dict[str, Any], stop: asyncio.Event
    ) -> None:
        assert result.reply is not None
        url = result.reply.callback_url
        async with self._slots:
            outcome = await self.client.send(url, body)
        CALLBACKS.labels("delivered" if outcome.delivered else "failed").inc()
        if not outcome.delivered:
            shown = redact_url(url)
            log.warning("callback for %s to %s failed: %s", result.image_id, shown, outcome.error)
            failed = CallbackFailed(
                result_id=result.result_id,
                image_id=result.image_id,
                task=result.task,
                callback_url=url,
                legacy_id=result.reply.legacy_id,
                body=body,
                attempts=outcome.attempts,
                error=outcome.error,
                retriable=outcome.retriable,
            )
            topic = self.topics.callbacks_failed
            await publish_until_acked(self.producer, topic, result.image_id, dump(failed), stop)
        self._done[key] = None
        if len(self._done) > _REMEMBERED_RESULTS:
            self._done.popitem(last=False)
