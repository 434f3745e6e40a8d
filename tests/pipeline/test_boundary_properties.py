"""Property tests at the record boundary: whatever a record's key, value and headers,
parsing never raises, and every answer a consumer builds for it (a result, a DLQ record,
an RPC reply) can be published: UTF-8, under the producer's record size limit, and
readable back with the ids it was built with.

``make test`` runs 100 examples per test (the ``ci`` profile, tests/conftest.py); ``make fuzz`` runs
many more. Generated cases that once failed stay below as explicit examples.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine
from typing import Any

from faststream.kafka import KafkaRouter
from hypothesis import example, given
from hypothesis import strategies as st

from consumers.config.settings import DeliverySettings, Settings
from consumers.pipeline.records import BadEvent, Record, parse_event
from consumers.pipeline.results import Stopwatch, error_result, ok_result
from consumers.search.rpc import EncoderRpc, reply_bytes
from consumers.worker.delivery import BatchDelivery, Delivered
from consumers.worker.dlq import TRUNCATED, dead_letter, dlq_headers, original_headers
from consumers.worker.fit import BUDGET_BYTES, encodable, record_size, result_record
from schemas.events import ImageSubmitted, Neighbor, TaskResult, TextQuery, result_id, utcnow
from schemas.rpc import RpcReply
from schemas.topics import Topics
from tests.hostile_strategies import TOPIC, headers, keys, records, values

MODELS: list[type[ImageSubmitted] | type[TextQuery]] = [ImageSubmitted, TextQuery]


def _record(key: bytes | None, value: bytes, heads: tuple[tuple[str, bytes], ...] = ()) -> Record:
    return Record(TOPIC, 0, 7, key, value, heads)


def _answer(record: Record, model: type[ImageSubmitted] | type[TextQuery]) -> TaskResult:
    """The result a consumer would publish for ``record`` (ok results with the most
    neighbours an event may ask for, each as long as an id may be)."""
    event = parse_event(record, model)
    if isinstance(event, BadEvent):
        return error_result("clip", event.event_id, event.image_id, event.error, model="m",
                            watch=Stopwatch())  # fmt: skip
    image_id = event.image_id if isinstance(event, ImageSubmitted) else event.query_id
    neighbors = [Neighbor(id=f"{n}" + "é" * 510, score=0.5) for n in range(event.top_k)]
    reply = event.reply if isinstance(event, ImageSubmitted) else None
    return ok_result("clip", event.event_id, image_id, model="m", dim=4, watch=Stopwatch(),
                     reply=reply, submitted_at=event.submitted_at, neighbors=neighbors)  # fmt: skip


def _check_publishable(result: TaskResult) -> None:
    key, value = result_record(result)
    assert record_size(key, value, [("content-type", b"application/json")]) <= BUDGET_BYTES
    back = TaskResult.model_validate_json(value)
    assert back.result_id == result_id(back.source_event_id, back.task)
    assert key == back.image_id.encode()
    assert (back.status, back.source_event_id) == (result.status, result.source_event_id) or (
        back.error is not None and "replaced by this error" in back.error.message
    )


def _check_ids(event: Any) -> None:
    assert isinstance(event, BadEvent | ImageSubmitted | TextQuery)
    if isinstance(event, BadEvent):
        assert event.error.code.value in ("invalid_event", "unsupported_schema")
        assert encodable(event.error.message)
        assert len(event.error.message) <= 2000
        for text in (event.event_id, event.image_id):
            assert encodable(text)
            assert len(text) <= 512


@given(records(), st.sampled_from(MODELS))
# Once stalled a partition (issue 18): a lone surrogate escape, an int over 4,300 digits,
# an image id over the record size limit once echoed with its key, NUL in ids.
@example(_record(b"k", b'{"event_id":"\\ud800"}'), ImageSubmitted)
@example(_record(b"k", b'{"event_id":"e","image_id":"\\udfff","uri":"s3://a/b"}'), ImageSubmitted)
@example(_record(b"k", b'{"top_k": 1' + b"0" * 4400 + b"}"), ImageSubmitted)
@example(_record(b"B" * 600_000, json.dumps({"event_id": "e", "image_id": "B" * 600_000}).encode()),
         ImageSubmitted)  # fmt: skip
@example(_record(None, b'{"event_id":"\\u0000","query_id":"\\u0000","text":"\\ud800"}'), TextQuery)
@example(_record(b"\xff", b"[" * 100_000), TextQuery)
def test_any_record_parses_and_its_result_can_be_published(
    record: Record, model: type[ImageSubmitted] | type[TextQuery]
) -> None:
    _check_ids(parse_event(record, model))
    _check_publishable(_answer(record, model))


@given(records())
@example(_record(b"k", b'{"event_id":"\\ud800","image_id":"\\ud800"}'))
def test_an_event_failing_alone_gets_a_publishable_internal_result(record: Record) -> None:
    delivery = BatchDelivery("clip", _never_called, DeliverySettings())
    _check_publishable(delivery._internal(record, RuntimeError("boom \ud800" * 3000)))


async def _never_called(_: Any) -> Any:
    raise AssertionError("not called")


@given(keys, values, headers, st.integers(0, 1_048_000))
@example(b"k" * 2000, b"v" * 1_047_900, (("a", b"\xff"),), 0)  # a DLQ record once over 1 MiB
@example(None, b"", (("h", b"x" * 600_000),), 500_000)
@example(None, b"", (("", b""), ("", b"")), 0)  # found: a repeated header name was lost
def test_any_dead_letter_fits_and_keeps_what_it_can(
    key: bytes | None, value: bytes, heads: tuple[tuple[str, bytes], ...], pad: int
) -> None:
    record = _record(key, value + b"p" * pad, heads)
    bad = parse_event(record, ImageSubmitted)
    assert isinstance(bad, BadEvent | ImageSubmitted)
    result = _answer(record, ImageSubmitted)
    letter = dead_letter(Delivered(record, result, 1, utcnow()))
    if letter is None:  # an ok result: nothing to dead-letter
        return
    encoded = [(name, text.encode()) for name, text in letter.headers.items()]
    assert record_size(letter.key, letter.value, encoded) <= BUDGET_BYTES
    info = dlq_headers(encoded)
    if TRUNCATED in letter.headers:
        assert record.value.startswith(letter.value)
        assert "DLQ record" in info["message"]
    else:  # kept as it came: replay restores the record byte for byte
        assert (letter.key, letter.value) == (record.key, record.value)
        assert original_headers(encoded) == list(record.headers)


@given(headers)
def test_replay_reads_any_dlq_headers(heads: tuple[tuple[str, bytes], ...]) -> None:
    prefixed = [(f"imagestream.orig64.{n}", v) for n, v in heads] + list(heads)
    restored = original_headers(prefixed)
    assert len(restored) <= len(prefixed)
    assert all(isinstance(v, bytes) for _, v in restored)
    assert all(encodable(v) for v in dlq_headers(prefixed).values())


# Subscribed on a router no broker includes: serve() is called directly.
_RPC = EncoderRpc(KafkaRouter(), Topics(""), Settings(_env_file=None))
_HUGE_URI = b'{"kind": "embed", "images": {"a": "' + b"x" * 1_100_000 + b'"}, '


@given(values)
@example(_HUGE_URI + b'"deadline": "2100-01-01T00:00:00Z"}')
@example(b'{"kind": "\\ud800"}')
def test_any_rpc_request_gets_a_publishable_reply(raw: bytes) -> None:
    reply = _finished(_RPC.serve(raw))  # no encoder bound: nothing awaits I/O
    data = reply_bytes(reply)
    assert len(data) <= BUDGET_BYTES
    back = RpcReply.model_validate_json(data)
    assert back.error is not None  # bad requests, or "not loaded" for good ones


def _finished(coro: Coroutine[Any, Any, RpcReply]) -> RpcReply:
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("serve() waited on something")
