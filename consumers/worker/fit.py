"""What a consumer publishes, made to fit Kafka: encodable, and under the producer's limit.

Every record a consumer reads gets exactly one answer (a result, an RPC reply or a DLQ
record). An answer that echoes untrusted input can be unencodable (a lone UTF-16
surrogate that JSON and pydantic accept as a ``str``) or over the producer's
``max_request_size`` (1 MiB by default; aiokafka raises ``MessageSizeTooLargeError``,
which is a ``KafkaError`` and would be taken for an outage, replaying the batch for
ever). So answers go through here: what cannot be carried is replaced or cut, and the
answer says so in its error message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiokafka.record.default_records import DefaultRecordBatchBuilder
from pydantic_core import PydanticSerializationError

from schemas.events import MAX_ID_CHARS, ErrorCode, Status, TaskError, TaskResult, dump

# aiokafka's default max_request_size, which every producer here keeps.
MAX_RECORD_BYTES = 1_048_576
# What our answers may use of it: FastStream adds headers of its own (content-type,
# correlation_id) to what it publishes.
BUDGET_BYTES = MAX_RECORD_BYTES - 512
_CUT = "…"


def record_size(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> int:
    """The size aiokafka's producer checks against ``max_request_size``."""
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers))
    return size


def encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def clean(text: str, max_chars: int = MAX_ID_CHARS) -> str:
    """``text`` made UTF-8 encodable (lone surrogates become U+FFFD) and at most
    ``max_chars`` long (the cut marked with an ellipsis)."""
    if not encodable(text):
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text if len(text) <= max_chars else text[: max_chars - 1] + _CUT


def result_record(result: TaskResult) -> tuple[bytes, bytes]:
    """(key, value) for the results topic: the result itself, or, when it cannot be
    carried, an error result with the same ids (cleaned) that says why."""
    try:
        key, value = result.image_id.encode(), dump(result)
    except (UnicodeEncodeError, PydanticSerializationError):
        return _stand_in(result, "the result held text that cannot be encoded as UTF-8")
    size = record_size(key, value, _RESULT_HEADERS)
    if size <= BUDGET_BYTES:
        return key, value
    return _stand_in(result, f"the result was {size:,} bytes, over the {BUDGET_BYTES:,} limit")


_RESULT_HEADERS = [("content-type", b"application/json")]


async def publish_result(publisher: Any, result: TaskResult) -> None:
    """Publish ``result`` (as ``result_record`` makes it) with a FastStream publisher."""
    key, value = result_record(result)
    await publisher.publish(value, key=key, headers={"content-type": "application/json"})


def _stand_in(result: TaskResult, why: str) -> tuple[bytes, bytes]:
    message, code = f"{why}; replaced by this error", ErrorCode.INVALID_EVENT
    if result.error is not None:
        code = result.error.code
        message += f" (was {code.value}: {clean(result.error.message, 500)})"
    stand_in = TaskResult(
        result_id=clean(result.result_id),
        source_event_id=clean(result.source_event_id),
        image_id=clean(result.image_id),
        task=clean(result.task, 64),
        status=Status.ERROR,
        error=TaskError(code=code, message=message),
        model=clean(result.model, 256) if result.model else None,
        timings=result.timings,
        # Bounded by the event's schema (and validated encodable): the legacy adapter
        # still needs it to call the error back.
        reply=result.reply,
        submitted_at=result.submitted_at,
        completed_at=result.completed_at,
    )
    return stand_in.image_id.encode(), dump(stand_in)
