"""Failed legacy callbacks sent again: a loop in the adapter, and ``imagestream legacy resend``.

The loop runs in the sender half, as its own consumer group on
``results.v1.callbacks.failed``. A record is due ``resend_backoff_s`` after it failed,
doubling with each failed round up to ``resend_backoff_max_s``. A partition whose next
record is not due yet is paused, not waited on, so the consumer keeps polling and keeps
its place in the group; it resumes when the record is due. A due callback is sent once:
delivered, its offset is committed; failed again, it is published anew with ``resends``
+ 1 and the old record committed past, so the last record of a callback on the topic
says where it stands. The loop leaves alone callbacks the target refused for good (a
4xx, a refused URL) and those that first failed more than ``resend_for_s`` ago;
``imagestream legacy resend`` sends those on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from consumers.config.settings import Settings
from consumers.legacy.backoff import backoff_s
from consumers.legacy.callbacks import CALLBACKS, CallbackClient, Outcome
from consumers.legacy.publish import publish_until_acked
from consumers.legacy.ssrf import guarded_session, guards
from consumers.ops.replay import read_topic
from consumers.worker.kafka import CLI_CLIENT_ID, client_kwargs, make_producer, started
from schemas.events import CallbackFailed, dump, utcnow
from schemas.topics import Topics

log = logging.getLogger("imagestream.legacy.resend")
RESEND_GROUP = "imagestream-legacy-resend"  # the default, after the topic prefix


def parse_failed(value: bytes | None) -> CallbackFailed | None:
    try:
        return CallbackFailed.model_validate_json(value or b"")
    except ValidationError:
        log.warning("not a CallbackFailed record, skipped: %r", (value or b"")[:300])
        return None


def failed_again(failed: CallbackFailed, outcome: Outcome) -> CallbackFailed:
    """The record a callback gets after another failed round."""
    return failed.model_copy(
        update={
            "attempts": outcome.attempts,
            "error": outcome.error,
            "retriable": outcome.retriable,
            "resends": failed.resends + 1,
            "first_failed_at": failed.since(),
            "failed_at": utcnow(),
        }
    )


class Resends:
    """Sending failed callbacks again, and recording the ones that fail once more."""

    def __init__(
        self, settings: Settings, client: CallbackClient, producer: AIOKafkaProducer
    ) -> None:
        self.legacy = settings.legacy
        self.topic = Topics(settings.kafka.topic_prefix).callbacks_failed
        self.client = client
        self.producer = producer
        self._slots = asyncio.Semaphore(self.legacy.callback_concurrency)

    async def send(self, failed: CallbackFailed, stop: asyncio.Event, attempts: int = 1) -> bool:
        """True when delivered; otherwise the callback is back on the failed topic."""
        async with self._slots:
            outcome = await self.client.send(failed.callback_url, failed.body, attempts)
        CALLBACKS.labels("resent" if outcome.delivered else "failed_again").inc()
        if outcome.delivered:
            log.info("callback for %s delivered on re-send", failed.image_id)
            return True
        again = failed_again(failed, outcome)
        await publish_until_acked(self.producer, self.topic, failed.image_id, dump(again), stop)
        return False


class Resender:
    """The adapter's loop over the failed-callbacks topic (see the module's docstring)."""

    def __init__(self, settings: Settings, resends: Resends) -> None:
        self.settings = settings
        self.legacy = settings.legacy
        self.topics = Topics(settings.kafka.topic_prefix)
        self.group_id = self.topics.group(RESEND_GROUP)
        self.resends = resends
        self._paused: dict[TopicPartition, float] = {}  # -> loop time it is due

    def wanted(self, failed: CallbackFailed) -> bool:
        if not failed.retriable:
            return False
        age_s = (utcnow() - failed.since()).total_seconds()
        if age_s > self.legacy.resend_for_s:
            log.error(
                "callback for %s to %s failing for %.0f s: no more re-sends; "
                "`imagestream legacy resend` sends it again",
                failed.image_id, failed.callback_url, age_s,
            )  # fmt: skip
            return False
        return True

    def due_in_s(self, failed: CallbackFailed) -> float:
        legacy = self.legacy
        delay = backoff_s(
            failed.resends + 1, legacy.resend_backoff_s, legacy.resend_backoff_max_s, jitter=False
        )
        return (failed.failed_at + timedelta(seconds=delay) - utcnow()).total_seconds()

    def _consumer(self) -> AIOKafkaConsumer:
        # aiokafka itself, not a FastStream subscriber: a partition whose next record is
        # not due is paused and resumed later, which FastStream's subscribers cannot do.
        kafka = self.settings.kafka
        return AIOKafkaConsumer(
            **client_kwargs(kafka),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # a failed callback is never skipped
            session_timeout_ms=kafka.session_timeout_ms,
            heartbeat_interval_ms=kafka.heartbeat_interval_ms,
            max_poll_interval_ms=kafka.max_poll_interval_ms,
        )

    async def run(self, stop: asyncio.Event) -> None:
        async with started(self._consumer()) as consumer:
            consumer.subscribe([self.topics.callbacks_failed], listener=_Forget(self._paused))
            log.info("re-sending failed callbacks of %s", self.topics.callbacks_failed)
            while not stop.is_set():
                self._resume_due(consumer)
                batches = await consumer.getmany(timeout_ms=1000, max_records=64)
                for tp, records in batches.items():
                    await self._partition(consumer, tp, records, stop)

    def _resume_due(self, consumer: AIOKafkaConsumer) -> None:
        now = asyncio.get_running_loop().time()
        for tp, due in list(self._paused.items()):
            if due <= now:
                del self._paused[tp]
                if tp in consumer.assignment():
                    consumer.resume(tp)

    async def _partition(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        records: Sequence[Any],
        stop: asyncio.Event,
    ) -> None:
        todo: list[CallbackFailed] = []
        commit_at: int | None = None
        for record in records:
            failed = parse_failed(record.value)
            if failed is not None and self.wanted(failed):
                wait_s = self.due_in_s(failed)
                if wait_s > 0:
                    # In order: what follows failed later. It may be due sooner (fewer
                    # rounds), but waits at most resend_backoff_max_s behind this one.
                    consumer.seek(tp, record.offset)
                    consumer.pause(tp)
                    self._paused[tp] = asyncio.get_running_loop().time() + wait_s
                    break
                todo.append(failed)
            commit_at = record.offset + 1
        await asyncio.gather(*(self.resends.send(failed, stop) for failed in todo))
        if commit_at is not None:
            try:
                await consumer.commit({tp: commit_at})
            except KafkaError as exc:
                log.warning("commit failed, these re-sends will be repeated: %r", exc)


class _Forget(ConsumerRebalanceListener):  # type: ignore[misc]
    """A partition taken away is no longer ours to resume."""

    def __init__(self, paused: dict[TopicPartition, float]) -> None:
        self.paused = paused

    async def on_partitions_revoked(self, revoked: Any) -> None:
        for tp in revoked:
            self.paused.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None


async def outstanding(
    settings: Settings, *, hours: float | None, include_refused: bool
) -> list[CallbackFailed]:
    """The callbacks not delivered yet, as of now: the last record of each callback on the
    failed topic, unless the loop's group has committed past it while it was one the loop
    sends (then the loop delivered it)."""
    legacy = settings.legacy
    topic = Topics(settings.kafka.topic_prefix).callbacks_failed
    handled = await _handled_up_to(settings, topic)
    latest: dict[tuple[str, str], tuple[CallbackFailed, bool]] = {}
    async with contextlib.aclosing(read_topic(settings, topic, idle_timeout_s=30)) as records:
        async for record in records:
            failed = parse_failed(record.value)
            if failed is not None:
                looped = record.offset < handled.get(record.partition, 0)
                latest[(failed.result_id, failed.callback_url)] = (failed, looped)
    cutoff = None if hours is None else utcnow() - timedelta(hours=hours)
    chosen = []
    for failed, looped in latest.values():
        expired = (utcnow() - failed.since()).total_seconds() > legacy.resend_for_s
        if looped and failed.retriable and not expired:
            continue
        if (include_refused or failed.retriable) and (cutoff is None or failed.failed_at >= cutoff):
            chosen.append(failed)
    return chosen


async def _handled_up_to(settings: Settings, topic: str) -> dict[int, int]:
    """Partition -> the offset the adapter's loop has committed (0 where none)."""
    group = Topics(settings.kafka.topic_prefix).group(RESEND_GROUP)
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings.kafka), group_id=group, enable_auto_commit=False
    )
    async with started(consumer):  # not subscribed: it reads the group's offsets, never joins
        await consumer.topics()
        numbers = consumer.partitions_for_topic(topic) or set()
        return {n: await consumer.committed(TopicPartition(topic, n)) or 0 for n in numbers}


async def resend_all(
    resends: Resends, chosen: list[CallbackFailed], on_done: Callable[[CallbackFailed, bool], None]
) -> int:
    """Send each with the full ``callback_attempts``; returns how many were delivered."""
    stop = asyncio.Event()
    attempts = resends.legacy.callback_attempts

    async def one(failed: CallbackFailed) -> bool:
        delivered = await resends.send(failed, stop, attempts)
        on_done(failed, delivered)
        return delivered

    return sum(await asyncio.gather(*(one(failed) for failed in chosen)))


async def resend_command(
    settings: Settings, hours: float | None, include_refused: bool, dry_run: bool
) -> int:
    """``imagestream legacy resend``: one line per callback, then a count; 1 if any failed."""
    chosen = await outstanding(settings, hours=hours, include_refused=include_refused)

    def show(failed: CallbackFailed, delivered: bool | None) -> None:
        state = {None: "outstanding", True: "delivered", False: "failed again"}[delivered]
        print(f"{failed.legacy_id}  {failed.callback_url}  {state}  (last error: {failed.error})")

    if dry_run:
        for failed in chosen:
            show(failed, None)
        print(f"would re-send {len(chosen)} callback(s)")
        return 0
    _, guard = guards(settings.legacy)  # the callbacks' networks, as the adapter's sender
    producer = make_producer(settings.kafka, CLI_CLIENT_ID)
    async with guarded_session(guard, settings.legacy.http_timeout_s) as http, started(producer):
        resends = Resends(settings, CallbackClient(settings.legacy, http, guard), producer)
        delivered = await resend_all(resends, chosen, show)
    again = len(chosen) - delivered
    print(f"re-sent {len(chosen)} callback(s): {delivered} delivered, {again} back on the topic")
    return 0 if delivered == len(chosen) else 1
