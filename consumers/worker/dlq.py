"""The dead-letter topic (``images.v1.dlq``): which bad input gets a record, and its format.

Which error results also get a DLQ record: those whose code says the input itself could
not be processed (``DLQ_CODES``): ``invalid_event``, ``unsupported_schema``,
``bucket_not_allowed``, ``object_not_found``, ``image_too_large``, ``not_an_image`` and
``internal`` (an event that fails even on its own). Not ``no_face`` (a valid answer
about a valid image), and never a transient outage: such batches wait and replay.

A DLQ record carries the source record's key and value bytes unchanged, and headers:
``imagestream.dlq.{source_topic,source_partition,source_offset,task,code,message,
attempts,first_seen,event_id}``, and ``imagestream.dlq.truncated`` on a letter that had
to be cut to fit the producer's record size limit (the source record was near it). The
source record's own headers travel as ``imagestream.orig.<name>`` (UTF-8 values) or
``imagestream.orig64.<name>`` (base64 of any other value), a repeated name as
``imagestream.origrep.<position>.<name>`` (base64), so that ``imagestream dlq replay``
can restore them byte for byte (``consumers/ops/replay.py``). Each task's consumer group
writes its own record for an event it could not process.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from consumers.worker.fit import BUDGET_BYTES, clean, record_size
from schemas.events import ErrorCode, Status

if TYPE_CHECKING:
    from consumers.worker.delivery import Delivered

DLQ_CODES = frozenset(
    {
        ErrorCode.INVALID_EVENT,
        ErrorCode.UNSUPPORTED_SCHEMA,
        ErrorCode.BUCKET_NOT_ALLOWED,
        ErrorCode.OBJECT_NOT_FOUND,
        ErrorCode.IMAGE_TOO_LARGE,
        ErrorCode.NOT_AN_IMAGE,
        ErrorCode.INTERNAL,
    }
)
PREFIX = "imagestream.dlq."
ORIGINAL, ORIGINAL_B64 = "imagestream.orig.", "imagestream.orig64."
ORIGINAL_REPEAT = "imagestream.origrep."  # + "<position>.<name>": a name seen before
REPLAYED_FROM = "imagestream.replayed_from"
TRUNCATED = f"{PREFIX}truncated"
_MAX_MESSAGE_CHARS = 1000
_MAX_KEY_BYTES = 1024
_NOTE_ROOM = 1024  # the truncation note, in its header and the message (4 bytes a char)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    headers: dict[str, str]


def dead_letter(delivered: Delivered) -> DeadLetter | None:
    """The DLQ record for a result, or None when its outcome does not call for one."""
    result, record = delivered.result, delivered.record
    if result.status is not Status.ERROR or result.error is None:
        return None
    if result.error.code not in DLQ_CODES:
        return None
    headers = {
        f"{PREFIX}source_topic": record.topic,
        f"{PREFIX}source_partition": str(record.partition),
        f"{PREFIX}source_offset": str(record.offset),
        f"{PREFIX}task": result.task,
        f"{PREFIX}code": result.error.code.value,
        f"{PREFIX}message": clean(result.error.message, _MAX_MESSAGE_CHARS),
        f"{PREFIX}attempts": str(delivered.attempts),
        f"{PREFIX}first_seen": delivered.first_seen.isoformat(),
        f"{PREFIX}event_id": clean(result.source_event_id),
    }
    for index, (name, value) in enumerate(record.headers):
        if ORIGINAL + name in headers or ORIGINAL_B64 + name in headers:
            # Kafka allows a name twice; a dict key does not: number the repeats.
            headers[f"{ORIGINAL_REPEAT}{index}.{name}"] = base64.b64encode(value).decode()
            continue
        try:
            headers[ORIGINAL + name] = value.decode()
        except UnicodeDecodeError:
            headers[ORIGINAL_B64 + name] = base64.b64encode(value).decode()
    return _fitted(DeadLetter(record.key, record.value, headers))


def _size(key: bytes | None, value: bytes, headers: dict[str, str]) -> int:
    return record_size(key, value, [(name, text.encode()) for name, text in headers.items()])


def _fitted(letter: DeadLetter) -> DeadLetter:
    """The letter, cut to fit the producer's limit where the source record plus our
    headers do not: the key to 1 KiB, the source's headers dropped when they take half
    the room, then the value cut. A cut letter says so (``truncated`` and the message)
    and is not replayed: its bytes are no longer the event."""
    key, value, headers = letter.key, letter.value, dict(letter.headers)
    if _size(key, value, headers) <= BUDGET_BYTES:
        return letter
    notes = []
    if key is not None and len(key) > _MAX_KEY_BYTES:
        notes.append(f"key cut from {len(key):,} bytes")
        key = key[:_MAX_KEY_BYTES]
    if _size(key, b"", headers) > BUDGET_BYTES // 2:
        originals = [n for n in headers if n.startswith((ORIGINAL, ORIGINAL_B64, ORIGINAL_REPEAT))]
        for name in originals:
            del headers[name]
        notes.append(f"{len(originals)} source header(s) dropped")
    room = BUDGET_BYTES - _size(key, b"", headers) - _NOTE_ROOM
    if len(value) > room:
        notes.append(f"value cut from {len(value):,} to {room:,} bytes")
        value = value[: max(room, 0)]
    note = "; ".join(notes)
    headers[TRUNCATED] = note
    message = f"{PREFIX}message"
    headers[message] = f"{headers[message][: _MAX_MESSAGE_CHARS - 200]} (DLQ record: {note})"
    return DeadLetter(key, value, headers)


def original_headers(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The source record's headers, restored from a DLQ record's."""
    restored = []
    for name, value in headers:
        if name.startswith(ORIGINAL):
            restored.append((name.removeprefix(ORIGINAL), value))
            continue
        if name.startswith(ORIGINAL_B64):
            original = name.removeprefix(ORIGINAL_B64)
        elif name.startswith(ORIGINAL_REPEAT):
            original = name.removeprefix(ORIGINAL_REPEAT).partition(".")[2]
        else:
            continue
        try:
            restored.append((original, base64.b64decode(value, validate=True)))
        except binascii.Error:
            continue  # not written by us: leave it out rather than guess
    return restored


def dlq_headers(headers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    """The ``imagestream.dlq.*`` headers by short name (``code``, ``source_offset``...)."""
    return {
        name.removeprefix(PREFIX): value.decode(errors="replace")
        for name, value in headers
        if name.startswith(PREFIX)
    }
