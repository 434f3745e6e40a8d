"""The batch subscriber every consumer group here uses: manual acks, each record parsed
on its own by the decoder, into the typed batch the handler takes."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from faststream.kafka import KafkaRouter
from faststream.middlewares import AckPolicy
from pydantic import BaseModel, GetCoreSchemaHandler
from pydantic_core import CoreSchema

from consumers.config.settings import KafkaSettings, SearchSettings, TaskSettings
from consumers.pipeline.records import Record
from schemas.topics import Topics

log = logging.getLogger("imagestream.consumer")
# Kafka's own rule for topic names; a reply_to header that breaks it cannot be answered.
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
Parse = Callable[[Any], Awaitable[Any]]
E = TypeVar("E", bound=BaseModel)


class PolledBatch(Generic[E]):
    """What a batch subscriber's handler takes: the polled records, each with its value
    parsed as ``E`` or as why it is not one (``Record.event``), and the consumer that
    polled them, which commits their offsets (manual, per partition: delivery.py).

    FastStream casts a handler's body only as a whole, so one bad event would fail the
    batch: the broker runs with ``apply_types=False`` and this decoder parses each record
    itself. The body's documented schema is its wire form, a list of ``E``.
    """

    __slots__ = ("consumer", "records")

    def __init__(self, records: list[Record], consumer: Any) -> None:
        self.records = records
        self.consumer = consumer

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        (model,) = getattr(source, "__args__", (BaseModel,))
        return handler(list[model])  # type: ignore[valid-type]  # the batch's event model


def _readable(record: Any) -> Any:
    """``record``, or a copy of it whose header values FastStream can decode: its
    parsers decode each one as strict UTF-8, so one binary (or null) header value would
    fail a whole batch before the handler saw any of it."""
    headers = record.headers or ()
    if all(_decodes(value) for _, value in headers):
        return record
    lenient = tuple((k, (v or b"").decode("utf-8", "replace").encode()) for k, v in headers)
    return dataclasses.replace(record, headers=lenient)


def _decodes(value: bytes | None) -> bool:
    if value is None:
        return False
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


async def tolerant_batch_parser(records: tuple[Any, ...], original: Parse) -> Any:
    """FastStream's batch parser on readable copies; the handler gets the originals
    (``raw_message``), whose header bytes a DLQ record keeps."""
    msg = await original(tuple(_readable(r) for r in records))
    msg.raw_message = records
    return msg


async def tolerant_parser(record: Any, original: Parse) -> Any:
    """The same for one record; a reply_to that is no topic name gets no reply."""
    msg = await original(_readable(record))
    msg.raw_message = record
    if msg.reply_to and not _TOPIC.match(msg.reply_to):
        log.warning(
            "%s/%d/%d: reply_to is not a topic name, no reply sent",
            record.topic,
            record.partition,
            record.offset,
        )
        msg.reply_to = ""
    return msg


def batch_decoder(model: type[E]) -> Callable[[Any], Awaitable[PolledBatch[E]]]:
    """The decoder of a batch of ``model`` events: parses each record, never raises (a
    malformed event becomes an error result, not a decoding failure of the batch)."""

    async def decode(msg: Any) -> PolledBatch[E]:
        records = [Record.from_consumer_record(r).parsed(model) for r in msg.raw_message]
        return PolledBatch(records, msg.consumer)

    return decode


def consumer_group(name: str, options: TaskSettings | SearchSettings, kafka: KafkaSettings) -> str:
    """``options.group_id``, else ``imagestream-<name>`` after the topic prefix (the
    group KEDA's ScaledObjects in infra/k8s watch)."""
    return options.group_id or Topics(kafka.topic_prefix).group(f"imagestream-{name}")


def batch_subscriber(
    router: KafkaRouter,
    topic: str,
    name: str,
    options: TaskSettings | SearchSettings,
    kafka: KafkaSettings,
    *,
    model: type[BaseModel],
    listener: Any,
    description: str,
) -> Any:
    """A subscriber for ``consumer_group(name, ...)`` of ``model`` events, whose commits
    the handler makes; ``listener`` sees the group's rebalances."""
    return router.subscriber(
        topic,
        group_id=consumer_group(name, options, kafka),
        batch=True,
        max_records=options.max_records,
        batch_timeout_ms=options.batch_timeout_ms,
        ack_policy=AckPolicy.MANUAL,
        decoder=batch_decoder(model),
        parser=tolerant_batch_parser,
        auto_offset_reset=kafka.auto_offset_reset,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
        max_poll_interval_ms=kafka.max_poll_interval_ms,
        listener=listener,
        title=f"{topic}:{name}",
        description=description,
    )
