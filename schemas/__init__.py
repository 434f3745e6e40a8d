"""imagestream event contracts: pydantic models and topic names."""

from schemas.events import (
    SCHEMA_VERSION,
    ErrorCode,
    Face,
    ImageSubmitted,
    Label,
    Neighbor,
    Reply,
    Status,
    TaskError,
    TaskResult,
    TextQuery,
    Timings,
    result_id,
)
from schemas.topics import Topics

__all__ = [
    "SCHEMA_VERSION",
    "ErrorCode",
    "Face",
    "ImageSubmitted",
    "Label",
    "Neighbor",
    "Reply",
    "Status",
    "TaskError",
    "TaskResult",
    "TextQuery",
    "Timings",
    "Topics",
    "result_id",
]
