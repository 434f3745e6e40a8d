"""Event contracts at the Kafka boundary.

These pydantic models are the single source of truth: the JSON Schema files and the
AsyncAPI document under ``schemas/generated/`` are generated from them
(``python -m schemas.export``). Unknown fields are ignored so producers can move ahead
of consumers; a missing required field is an ``invalid_event`` error result.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

SCHEMA_VERSION: Final = 1
# The task name of a TextQuery's result (the ``search`` consumer group's).
SEARCH_TASK: Final = "search"
MAX_METADATA_ITEMS = 32
MAX_METADATA_VALUE_CHARS = 1024
MAX_ID_CHARS = 512
# Milvus stores the metadata in a JSON field of at most 64 KiB; the tasks add a little.
MAX_METADATA_BYTES = 48 * 1024

Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])/(?P<key>.+)$")


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION


class Reply(BaseModel):
    """Legacy routing: where the legacy adapter sends this image's result."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    # Bounded: a result echoes its event's reply, and a result must fit in a Kafka record.
    callback_url: str = Field(max_length=4096)
    legacy_id: str = Field(max_length=MAX_ID_CHARS)
    model_name: str | None = Field(default=None, max_length=256)


class ImageSubmitted(_Event):
    """A producer stored an image in S3 and asks for it to be processed."""

    event_id: Id = Field(description="Producer-chosen, unique per submission.")
    image_id: Id = Field(description="The caller's id; the vector primary key derives from it.")
    uri: str = Field(description="s3://bucket/key of the image.", max_length=2048)
    tasks: list[str] = Field(
        default_factory=list, description="Subset of enabled tasks; empty means all."
    )
    top_k: int = Field(default=20, ge=0, le=1000, description="Neighbours to return.")
    collection: str | None = Field(
        default=None, max_length=64, description="Tenant for isolation (partition key)."
    )
    metadata: dict[str, str] = Field(
        default_factory=dict, description="Small free-form map stored with the vector."
    )
    reply: Reply | None = None
    submitted_at: datetime = Field(default_factory=utcnow)

    @field_validator("uri")
    @classmethod
    def _s3_uri(cls, value: str) -> str:
        if not S3_URI.match(value):
            raise ValueError("uri must look like s3://bucket/key")
        return value

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_METADATA_ITEMS:
            raise ValueError(f"metadata has more than {MAX_METADATA_ITEMS} entries")
        for key, item in value.items():
            if len(key) > 64 or len(item) > MAX_METADATA_VALUE_CHARS:
                raise ValueError(f"metadata entry {key[:64]!r} is too long")
        size = len(json.dumps(value, ensure_ascii=False).encode())
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"metadata is {size:,} bytes as JSON, over {MAX_METADATA_BYTES:,}")
        return value

    @field_validator("collection")
    @classmethod
    def _printable_tenant(cls, value: str | None) -> str | None:
        # The tenant ends up inside Milvus filter expressions: no control characters.
        if value is not None and not value.isprintable():
            raise ValueError("collection must not contain control characters")
        return value

    def bucket_key(self) -> tuple[str, str]:
        match = S3_URI.match(self.uri)
        assert match is not None  # validated above
        return match["bucket"], match["key"]


SearchMode = Literal["vector", "text", "hybrid"]


class TextQuery(_Event):
    """Text-to-image search: by CLIP similarity, by words in captions and OCR text, or both."""

    event_id: Id
    query_id: Id
    text: str = Field(min_length=1, max_length=4096)
    top_k: int = Field(default=20, ge=1, le=1000)
    collection: str | None = Field(default=None, max_length=64)
    image_ids: list[str] | None = Field(
        default=None, description="Restrict the search to these image ids."
    )
    mode: SearchMode = Field(
        default="vector",
        description="vector: CLIP similarity of the text to each image; text: BM25 of the "
        "words over captions and OCR text; hybrid: reciprocal rank fusion of all three lists.",
    )
    submitted_at: datetime = Field(default_factory=utcnow)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text must not be blank")
        return value


class ErrorCode(StrEnum):
    """A closed set: consumers of results can switch on it."""

    INVALID_EVENT = "invalid_event"
    UNSUPPORTED_SCHEMA = "unsupported_schema"
    BUCKET_NOT_ALLOWED = "bucket_not_allowed"
    OBJECT_NOT_FOUND = "object_not_found"
    IMAGE_TOO_LARGE = "image_too_large"
    NOT_AN_IMAGE = "not_an_image"
    NO_FACE = "no_face"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    SOURCE_NOT_ALLOWED = "source_not_allowed"  # a legacy s3_path URL refused (SSRF guard)


class TaskError(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: ErrorCode
    message: str


class Neighbor(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    score: float = Field(
        description="Cosine similarity, 1.0 = identical direction; text search: the BM25 "
        "score (summed over captions and OCR text); hybrid: the reciprocal-rank-fusion score."
    )
    image_id: str | None = Field(
        default=None, description="Face neighbours: the image the face was found in."
    )
    lists: list[str] | None = Field(
        default=None,
        description="Text and hybrid search: the ranked lists that found it (clip, caption, ocr).",
    )


Box = tuple[int, int, int, int]


class OcrWord(BaseModel):
    model_config = ConfigDict(frozen=True)

    text: str
    bbox: Box = Field(description="x, y, width, height in pixels of the submitted image.")
    confidence: float = Field(description="Tesseract's word confidence, 0 to 1.")


class OcrLine(BaseModel):
    model_config = ConfigDict(frozen=True)

    text: str = Field(description="The line's words joined by single spaces.")
    bbox: Box = Field(description="x, y, width, height in pixels of the submitted image.")
    confidence: float = Field(description="Mean confidence of its words, 0 to 1.")
    words: list[OcrWord] = Field(default_factory=list)


class OcrText(BaseModel):
    """The ocr task: the text read from an image (empty when it has none)."""

    model_config = ConfigDict(frozen=True)

    text: str = Field(description="Lines joined by newlines, blocks by blank lines.")
    language: str = Field(description="The Tesseract language setting it was read with.")
    lines: list[OcrLine] = Field(default_factory=list, description="In reading order.")


class Face(BaseModel):
    model_config = ConfigDict(frozen=True)

    face_id: str = Field(description="{image_id}#{n}; n = 0 is the largest face.")
    bbox: tuple[int, int, int, int] = Field(
        description="x, y, width, height in pixels of the submitted image."
    )
    confidence: float = Field(description="The detector's confidence, 0 to 1.")
    neighbors: list[Neighbor] = Field(
        default_factory=list, description="The most similar faces in other images, best first."
    )
    person_id: str | None = Field(
        default=None,
        description="The person this face belongs to (stable within the tenant); null while "
        "too few similar faces have been seen to found one.",
    )


class Label(BaseModel):
    model_config = ConfigDict(frozen=True)

    label: str
    score: float


class ClassPrediction(BaseModel):
    """One classifier head's verdict on an image (seed 004's ``class_id`` + ``proba``)."""

    model_config = ConfigDict(frozen=True)

    head: str = Field(description="The head's name (`imagestream classifier train NAME`).")
    class_id: int = Field(description="Index of the class in the head's sorted classes.")
    label: str = Field(description="The class as named in the training labels.")
    proba: float = Field(description="The head's probability for that class, 0 to 1.")


class Timings(BaseModel):
    """Milliseconds per stage; stages a task did not run stay 0. ``wait``: decoded and
    waiting for the device while the previous batch finished (prefetch)."""

    model_config = ConfigDict(frozen=True)

    fetch: float = 0.0
    decode: float = 0.0
    wait: float = 0.0
    encode: float = 0.0
    index: float = 0.0
    search: float = 0.0
    total: float = 0.0


STAGES: tuple[str, ...] = tuple(Timings.model_fields)


class Status(StrEnum):
    OK = "ok"
    ERROR = "error"


class TaskResult(_Event):
    """One result per (image, task), or per text query."""

    result_id: str = Field(description="Deterministic from source event id + task.")
    source_event_id: str
    image_id: str
    task: str
    status: Status
    collection: str | None = Field(
        default=None, description="The event's tenant: results are read back within it."
    )
    error: TaskError | None = None
    model: str | None = None
    dim: int | None = None
    neighbors: list[Neighbor] = Field(default_factory=list)
    faces: list[Face] | None = None
    labels: list[Label] | None = None
    caption: str | None = None
    ocr: OcrText | None = Field(default=None, description="The ocr task: text read from the image.")
    classes: list[ClassPrediction] | None = Field(
        default=None, description="The classify task: one prediction per trained head."
    )
    truncated: bool | None = Field(
        default=None, description="Text search: the text was cut to the model's token limit."
    )
    timings: Timings = Field(default_factory=Timings)
    reply: Reply | None = None
    submitted_at: datetime | None = Field(
        default=None, description="Copied from the source event, for end-to-end latency."
    )
    completed_at: datetime = Field(default_factory=utcnow)


class CallbackFailed(_Event):
    """A legacy callback that still failed after every retry; the result is not lost."""

    result_id: str
    image_id: str
    task: str
    callback_url: str
    legacy_id: str
    body: dict[str, Any] = Field(description="The JSON body the callback would have sent.")
    attempts: int = Field(description="Requests made (0 when the URL itself was refused).")
    error: str = Field(description="Why the last attempt failed.")
    retriable: bool = Field(
        default=True,
        description="False when the target refused it for good (a 4xx, a refused URL): "
        "the adapter re-sends only retriable callbacks on its own.",
    )
    resends: int = Field(default=0, ge=0, description="Re-send rounds that failed so far.")
    first_failed_at: datetime | None = Field(
        default=None, description="When the callback first failed (unset: `failed_at`)."
    )
    failed_at: datetime = Field(default_factory=utcnow)

    def since(self) -> datetime:
        return self.first_failed_at or self.failed_at


def result_id(source_event_id: str, task: str) -> str:
    """A redelivered event yields the same id, so readers can dedupe."""
    # surrogatepass: an id salvaged from an unreadable event must still hash (and the
    # same way on every redelivery).
    text = f"{source_event_id}\x1f{task}"
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return digest[:32]


def dump(model: BaseModel) -> bytes:
    return model.model_dump_json(exclude_none=True).encode()


def loads_event(raw: Any) -> ImageSubmitted:
    return ImageSubmitted.model_validate_json(raw)
