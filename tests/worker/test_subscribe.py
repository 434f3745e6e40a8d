"""The batch subscriber's decoder: each record parsed once, into the typed batch."""

from __future__ import annotations

from types import SimpleNamespace

from aiokafka.structs import ConsumerRecord

from consumers.pipeline.records import BadEvent, parse_image_event
from consumers.worker.subscribe import batch_decoder
from schemas.events import ErrorCode, ImageSubmitted, dump
from tests.helpers import event


def _record(offset: int, value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        "images.v1", 0, offset, 0, 0, b"k", value, None, len(b"k"), len(value), [("h", b"\xff")]
    )


async def test_the_decoder_parses_each_record_once_and_keeps_the_consumer() -> None:
    good = dump(event("img-1", "s3://images/a.jpg"))
    consumer = object()
    msg = SimpleNamespace(raw_message=(_record(3, good), _record(4, b"{nope")), consumer=consumer)
    batch = await batch_decoder(ImageSubmitted)(msg)
    assert batch.consumer is consumer
    first, second = batch.records
    assert isinstance(first.event, ImageSubmitted)
    assert first.event.image_id == "img-1"
    assert isinstance(second.event, BadEvent)
    assert second.event.error.code == ErrorCode.INVALID_EVENT
    assert (second.offset, second.value, second.headers) == (4, b"{nope", (("h", b"\xff"),))
    # The pipeline and a retry read the decoder's parse rather than parsing again.
    assert parse_image_event(first) is first.event
    assert parse_image_event(second) is second.event
