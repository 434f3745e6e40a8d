"""A Kafka record as plain data, and turning its bytes into an event or a typed failure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from consumers.errors import ItemError
from schemas.events import SCHEMA_VERSION, ErrorCode, ImageSubmitted

E = TypeVar("E", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def from_consumer_record(cls, record: Any) -> Record:
        headers = tuple((name, value or b"") for name, value in record.headers or ())
        return cls(
            record.topic, record.partition, record.offset, record.key, record.value or b"", headers
        )

    @property
    def position(self) -> str:
        """Stable across redeliveries: the fallback event id of an unreadable event."""
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass(frozen=True, slots=True)
class BadEvent:
    """An event that could not be read, with whatever ids could be salvaged for its result."""

    event_id: str
    image_id: str
    error: ItemError


def _salvage(record: Record, doc: Any) -> tuple[str, str]:
    key = record.key.decode("utf-8", "replace") if record.key else ""
    if not isinstance(doc, dict):
        return record.position, key
    # A TextQuery's result carries its query id where an image's carries the image id.
    event_id, image_id = doc.get("event_id"), doc.get("image_id", doc.get("query_id"))
    return (
        event_id if isinstance(event_id, str) and event_id else record.position,
        image_id if isinstance(image_id, str) and image_id else key,
    )


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "event"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse_image_event(record: Record) -> ImageSubmitted | BadEvent:
    return parse_event(record, ImageSubmitted)


def parse_event(record: Record, model: type[E]) -> E | BadEvent:
    """The record as ``model`` (ImageSubmitted, TextQuery), or why it is not one."""
    try:
        doc = json.loads(record.value)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        # RecursionError: a few kB of "[[[[..." nest deeper than the parser allows.
        error = ItemError(ErrorCode.INVALID_EVENT, f"event is not valid JSON: {exc}")
        return BadEvent(*_salvage(record, None), error)
    event_id, image_id = _salvage(record, doc)
    if isinstance(doc, dict) and doc.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        message = f"schema_version {doc.get('schema_version')!r} is not supported (expected 1)"
        return BadEvent(event_id, image_id, ItemError(ErrorCode.UNSUPPORTED_SCHEMA, message))
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        error = ItemError(ErrorCode.INVALID_EVENT, f"invalid {model.__name__}: {_describe(exc)}")
        return BadEvent(event_id, image_id, error)
