"""``POST /v1/search``: text-to-image search.

The gateway publishes a ``TextQuery`` on ``queries.v1`` and waits (``request_timeout_s``)
for its result, which the ``search`` consumer group (beside the clip task,
``consumers/search/text.py``) publishes on ``results.v1`` under the query id.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, Field, ValidationError

from consumers.gateway.auth import SearchKey
from consumers.gateway.deps import Api
from consumers.gateway.errors import ApiError, ApiErrorCode, request_id
from consumers.gateway.responses import ERRORS
from schemas.events import SEARCH_TASK, Neighbor, SearchMode, TextQuery, dump

router = APIRouter()


class SearchRequest(BaseModel):
    text: str = Field(min_length=1, description="What to look for, e.g. 'a hedgehog'.")
    top_k: int = Field(default=5, ge=1, le=100)
    collection: str | None = Field(default=None, description="Search this tenant only.")
    image_ids: list[str] | None = Field(default=None, description="Rank only these images.")
    mode: SearchMode = Field(
        default="vector",
        description="vector: CLIP similarity; text: BM25 over captions and OCR text; "
        "hybrid: reciprocal rank fusion of the three (docs/ocr-and-text-search.md).",
    )


class SearchResponse(BaseModel):
    request_id: str
    query_id: str
    model: str
    truncated: bool = Field(description="The text was cut to the model's token limit.")
    results: list[Neighbor] = Field(
        description="Image ids, best match first; text and hybrid: with the lists that found each."
    )


@router.post(
    "/v1/search",
    response_model=SearchResponse,
    responses=ERRORS,
    summary="Text-to-image search: CLIP similarity, words in captions and OCR text, or both",
)
async def search(
    request: Request, gateway: Api, caller: SearchKey, body: Annotated[SearchRequest, Body()]
) -> SearchResponse:
    body = body.model_copy(update={"collection": caller.collection(body.collection)})
    if len(body.text) > gateway.limits.max_text_chars:
        limit = gateway.limits.max_text_chars
        raise ApiError(ApiErrorCode.TEXT_TOO_LONG, f"text is over {limit} characters", "text")
    try:
        query = TextQuery(
            event_id=uuid.uuid4().hex, query_id=f"q-{uuid.uuid4().hex}", **body.model_dump()
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ApiError(ApiErrorCode.INVALID_REQUEST, f"{field}: {first['msg']}", field) from exc
    runtime, timeout = gateway.runtime, gateway.limits.request_timeout_s
    if runtime.producer is None:
        raise ApiError(ApiErrorCode.UNAVAILABLE, "the gateway is starting")
    topic = runtime.topics.queries
    await runtime.producer.send_and_wait(topic, dump(query), key=query.query_id.encode())
    try:
        (result,) = await runtime.cache.wait(
            query.query_id, query.event_id, {SEARCH_TASK}, timeout, tenant=query.collection or ""
        )
    except TimeoutError:
        raise ApiError(
            ApiErrorCode.TIMEOUT,
            f"no search result within {timeout:g} s; is a clip consumer running "
            "(`imagestream consume --tasks clip`)?",
        ) from None
    if result.error is not None:
        raise ApiError.from_pipeline(result.error.code, result.error.message, None)
    return SearchResponse(
        request_id=request_id(request),
        query_id=query.query_id,
        model=result.model or "",
        truncated=bool(result.truncated),
        results=result.neighbors,
    )
