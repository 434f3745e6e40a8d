"""Turning raw Kafka bytes into events or typed failures, and the result contract."""

from __future__ import annotations

import json

import pytest

from consumers.pipeline.records import BadEvent, Record, parse_image_event
from schemas.events import ErrorCode, ImageSubmitted, TaskResult, result_id


def _record(value: bytes, key: bytes | None = b"img-1", offset: int = 7) -> Record:
    return Record("images.v1", 2, offset, key, value)


def _event(**fields: object) -> bytes:
    doc = {"event_id": "e1", "image_id": "img-1", "uri": "s3://images/a.jpg", **fields}
    return json.dumps(doc).encode()


def test_valid_event_parses_and_ignores_unknown_fields() -> None:
    event = parse_image_event(_record(_event(colour="blue", tasks=["clip"])))
    assert isinstance(event, ImageSubmitted)
    assert event.bucket_key() == ("images", "a.jpg")
    assert event.top_k == 20
    assert event.tasks == ["clip"]


@pytest.mark.parametrize(
    ("value", "code", "event_id", "image_id"),
    [
        (b"{not json", ErrorCode.INVALID_EVENT, "images.v1/2/7", "img-1"),
        (b"\xff\xfe\x00", ErrorCode.INVALID_EVENT, "images.v1/2/7", "img-1"),
        (b"[1, 2]", ErrorCode.INVALID_EVENT, "images.v1/2/7", "img-1"),
        (json.dumps({"event_id": "e9"}).encode(), ErrorCode.INVALID_EVENT, "e9", "img-1"),
        (_event(uri="http://example.com/a.jpg"), ErrorCode.INVALID_EVENT, "e1", "img-1"),
        (_event(top_k="many"), ErrorCode.INVALID_EVENT, "e1", "img-1"),
        (_event(schema_version=2), ErrorCode.UNSUPPORTED_SCHEMA, "e1", "img-1"),
        (_event(metadata={str(i): "v" for i in range(40)}), ErrorCode.INVALID_EVENT, "e1", "img-1"),
    ],
)
def test_bad_events_become_typed_failures(
    value: bytes, code: ErrorCode, event_id: str, image_id: str
) -> None:
    bad = parse_image_event(_record(value))
    assert isinstance(bad, BadEvent)
    assert bad.error.code is code
    assert bad.error.message
    assert (bad.event_id, bad.image_id) == (event_id, image_id)


def test_missing_field_message_names_the_field() -> None:
    bad = parse_image_event(_record(json.dumps({"event_id": "e1", "image_id": "x"}).encode()))
    assert isinstance(bad, BadEvent)
    assert "uri" in bad.error.message


def test_unreadable_event_without_key_still_gets_a_stable_id() -> None:
    first = parse_image_event(_record(b"garbage", key=None))
    again = parse_image_event(_record(b"garbage", key=None))
    assert isinstance(first, BadEvent)
    assert isinstance(again, BadEvent)
    assert first.event_id == again.event_id == "images.v1/2/7"
    assert first.image_id == ""


def test_result_id_is_deterministic_per_event_and_task() -> None:
    assert result_id("e1", "clip") == result_id("e1", "clip")
    assert result_id("e1", "clip") != result_id("e1", "face")
    assert result_id("e1", "clip") != result_id("e2", "clip")


def test_result_round_trips_and_ignores_unknown_fields() -> None:
    doc = {
        "result_id": "r",
        "source_event_id": "e",
        "image_id": "i",
        "task": "clip",
        "status": "error",
        "error": {"code": "not_an_image", "message": "no"},
        "future_field": 1,
    }
    result = TaskResult.model_validate(doc)
    assert result.error is not None
    assert result.error.code is ErrorCode.NOT_AN_IMAGE
    with pytest.raises(ValueError, match="code"):
        TaskResult.model_validate({**doc, "error": {"code": "made_up", "message": "x"}})
