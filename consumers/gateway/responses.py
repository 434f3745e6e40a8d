"""Response bodies of the gateway, and the OpenAPI pieces FastAPI cannot infer."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from consumers.gateway.errors import STATUS, ErrorResponse
from schemas.events import Label, TaskResult


class EmbeddingsResponse(BaseModel):
    request_id: str
    model: str = Field(description="The model that made the vectors.")
    dim: int
    vectors: dict[str, list[float]] = Field(
        description="Form key -> L2-normalised vector; images and texts share one space."
    )
    truncated: list[str] = Field(
        default_factory=list, description="Text keys cut to the model's token limit."
    )


class LabelsResponse(BaseModel):
    request_id: str
    label_set: str
    model: str
    labels: list[Label] = Field(description="Best first; scores are softmax over the set.")
    top_categories: list[str] = Field(description="The labels' names (seed 001's field).")


class ImageAccepted(BaseModel):
    request_id: str
    image_id: str
    event_id: str
    uri: str
    tasks: list[str]
    results_url: str
    results: list[TaskResult] | None = Field(
        default=None, description="With ?wait=true: one result per task."
    )


class ResultsResponse(BaseModel):
    request_id: str
    image_id: str
    results: list[TaskResult] = Field(description="The latest result per task, by task name.")


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": "A typed error"}
    for status in sorted(set(STATUS.values()))
}

MULTIPART_ANY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "description": "Any form keys: file parts are images, plain fields texts.",
                    "additionalProperties": {
                        "oneOf": [{"type": "string", "format": "binary"}, {"type": "string"}]
                    },
                }
            }
        },
    }
}
