"""A Kafka record as plain data, and turning its bytes into an event or a typed failure."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, TypeGuard, TypeVar

from pydantic import BaseModel, ValidationError

from consumers.pipeline.item_errors import ItemError
from consumers.worker.fit import clean, encodable
from schemas.events import MAX_ID_CHARS, SCHEMA_VERSION, ErrorCode, ImageSubmitted

E = TypeVar("E", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    # What ``parse_event`` made of the value, once (the subscriber's decoder parses each
    # record as it is polled); a retry, split or replay reads it from here.
    event: BaseModel | BadEvent | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_consumer_record(cls, record: Any) -> Record:
        headers = tuple((name, value or b"") for name, value in record.headers or ())
        return cls(
            record.topic, record.partition, record.offset, record.key, record.value or b"", headers
        )

    def parsed(self, model: type[BaseModel]) -> Record:
        """This record with its value parsed as ``model`` (or why it is not one)."""
        return replace(self, event=parse_event(self, model))

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
    """Ids for the result of an unreadable event: its own where they can be carried as
    they are, else the record's position (stable across redeliveries) and its key."""
    key = clean(record.key.decode("utf-8", "replace")) if record.key else ""
    if not isinstance(doc, dict):
        return record.position, key
    # A TextQuery's result carries its query id where an image's carries the image id.
    event_id, image_id = doc.get("event_id"), doc.get("image_id", doc.get("query_id"))
    return (
        event_id if _usable(event_id) else record.position,
        image_id if _usable(image_id) else key,
    )


def _usable(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS and encodable(value)


def _loads(value: bytes) -> Any:
    """The value as Python data, or None where it is not JSON Python can hold: besides
    syntax errors, ints over 4,300 digits (ValueError) and deep nesting (RecursionError)."""
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return None


def describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:5]:
        where = ".".join(clean(str(p), 64) for p in err["loc"]) or "event"
        parts.append(f"{where}: {clean(err['msg'], 300)}")
    return "; ".join(parts)


def parse_image_event(record: Record) -> ImageSubmitted | BadEvent:
    return parse_event(record, ImageSubmitted)


def parse_event(record: Record, model: type[E]) -> E | BadEvent:
    """The record as ``model`` (ImageSubmitted, TextQuery), or why it is not one. Never
    raises, whatever the bytes.

    pydantic's own JSON parser reads the event: unlike ``json.loads`` it refuses lone
    surrogates (``"\\ud800"``), which would make every id and result derived from the
    event unencodable, and it bounds nesting and number sizes itself."""
    done = record.event
    if isinstance(done, BadEvent):
        return done
    if isinstance(done, model):
        return done  # parsed once already, by the subscriber's decoder
    try:
        return model.model_validate_json(record.value)
    except ValidationError as exc:
        error = _refusal(exc, model)
    except Exception as exc:  # whatever the bytes: an answer, never a stalled batch
        error = ItemError(ErrorCode.INVALID_EVENT, f"unreadable event: {type(exc).__name__}")
    doc = _loads(record.value)
    event_id, image_id = _salvage(record, doc)
    if isinstance(doc, dict) and doc.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        version = clean(repr(doc.get("schema_version")), 64)
        message = f"schema_version {version} is not supported (expected 1)"
        return BadEvent(event_id, image_id, ItemError(ErrorCode.UNSUPPORTED_SCHEMA, message))
    return BadEvent(event_id, image_id, error)


def _refusal(exc: ValidationError, model: type[BaseModel]) -> ItemError:
    errors = exc.errors(include_input=False, include_url=False)
    syntax = [err["msg"] for err in errors if err["type"] == "json_invalid"]
    if syntax:
        reason = clean(syntax[0].removeprefix("Invalid JSON: "), 300)
        return ItemError(ErrorCode.INVALID_EVENT, f"event is not valid JSON: {reason}")
    return ItemError(ErrorCode.INVALID_EVENT, f"invalid {model.__name__}: {describe(exc)}")
