"""The HTTP gateway: seed 001's REST API and the pipeline's front door, as an ASGI app.

- `POST /v1/embeddings`: any mix of images and texts, vectors keyed by form key.
- `POST /v1/labels`: top-k zero-shot labels of one image over a named label set.
- `POST /v1/images`: upload and submit an image to the pipeline (`?wait=true` waits).
- `GET /v1/results/{image_id}`: the latest result per task this gateway has seen.

The gateway holds no model: embeddings and labels go to the CLIP consumers over Kafka
request/reply, so the GPU stays there. Every error is a typed JSON body
(`{"error": {"code", "message", "field"}, "request_id"}`); the `request_id` (or
`X-Request-ID`) header is echoed, or a UUID is generated and logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse

from consumers.config.settings import Settings
from consumers.gateway.api_keys import Scope
from consumers.gateway.auth import IngestKey, install_auth
from consumers.gateway.core import Gateway
from consumers.gateway.demo_page import router as demo
from consumers.gateway.deps import Api
from consumers.gateway.errors import ApiError, ApiErrorCode, install_error_handlers, request_id
from consumers.gateway.forms import read_parts
from consumers.gateway.middleware import BodyLimitMiddleware, RequestIdMiddleware
from consumers.gateway.people import close_book
from consumers.gateway.people import router as people
from consumers.gateway.responses import (
    ERRORS,
    MULTIPART_ANY,
    EmbeddingsResponse,
    ImageAccepted,
    LabelsResponse,
    ResultsResponse,
)
from consumers.gateway.runtime import GatewayRuntime
from consumers.gateway.search import router as search

router = APIRouter()


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingsResponse,
    responses=ERRORS,
    openapi_extra=MULTIPART_ANY,
    summary="Vectors for any mix of images (file parts) and texts (plain fields)",
)
async def embeddings(request: Request, gateway: Api, _: IngestKey) -> EmbeddingsResponse:
    parts = await read_parts(request, gateway.limits)
    if not parts.images and not parts.texts:
        raise ApiError(ApiErrorCode.INVALID_REQUEST, "send at least one image or text")
    reply = await gateway.encode(parts, kind="embed")
    return EmbeddingsResponse(
        request_id=request_id(request),
        model=reply.model or "",
        dim=reply.dim or 0,
        vectors=reply.vectors,
        truncated=reply.truncated,
    )


@router.post(
    "/v1/labels",
    response_model=LabelsResponse,
    responses=ERRORS,
    openapi_extra=MULTIPART_ANY,
    summary="Top-k zero-shot labels of one image (one file part, any key)",
)
async def labels(
    request: Request,
    gateway: Api,
    _: IngestKey,
    label_set: Annotated[str | None, Query(description="Default: zero_shot.default_set.")] = None,
    top_k: Annotated[int | None, Query(ge=1, description="Default: zero_shot.top_k.")] = None,
) -> LabelsResponse:
    name, k = gateway.label_set(label_set, top_k)
    parts = await read_parts(request, gateway.limits)
    if len(parts.images) != 1 or parts.texts:
        raise ApiError(ApiErrorCode.INVALID_REQUEST, "send exactly one image and no text")
    reply = await gateway.encode(parts, kind="labels", label_set=name, top_k=k)
    found = next(iter(reply.labels.values()), [])
    return LabelsResponse(
        request_id=request_id(request),
        label_set=name,
        model=reply.model or "",
        labels=found,
        top_categories=[label.label for label in found],
    )


@router.post(
    "/v1/images",
    response_model=ImageAccepted,
    response_model_exclude_none=True,
    status_code=202,
    responses=ERRORS,
    summary="Upload an image and submit it to the pipeline",
)
async def images(
    request: Request,
    gateway: Api,
    key: IngestKey,
    image: Annotated[UploadFile, File(description="JPEG, PNG, WebP, GIF, BMP, TIFF, AVIF.")],
    image_id: Annotated[str | None, Form(description="Default: a new UUID.")] = None,
    tasks: Annotated[str | None, Form(description="Comma-separated; default: all.")] = None,
    top_k: Annotated[int, Form(ge=0, le=1000)] = 20,
    collection: Annotated[str | None, Form(description="Tenant; default: the key's.")] = None,
    wait: Annotated[bool, Query(description="Answer 200 once every result arrived.")] = False,
) -> JSONResponse:
    faces = key.allows(Scope.FACES)
    event = gateway.event(image_id, tasks, top_k, key.collection(collection), faces=faces)
    found, status = await gateway.submit(image, event, wait)
    body = ImageAccepted(
        request_id=request_id(request),
        image_id=event.image_id,
        event_id=event.event_id,
        uri=event.uri,
        tasks=event.tasks or gateway.settings.enabled_tasks(),
        results_url=_results_url(event.image_id, event.collection),
        results=[r.model_copy(update={"reply": None}) for r in found] if found else None,
    )
    return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=status)


def _results_url(image_id: str, collection: str | None) -> str:
    url = f"/v1/results/{quote(image_id, safe='')}"
    return f"{url}?collection={quote(collection, safe='')}" if collection else url


@router.get(
    "/v1/results/{image_id:path}",
    response_model=ResultsResponse,
    response_model_exclude_none=True,
    responses=ERRORS,
    summary="The latest result per task for an image, as this gateway saw them",
)
async def results(
    request: Request,
    gateway: Api,
    key: IngestKey,
    image_id: str,
    collection: Annotated[str | None, Query(description="Default: the key's.")] = None,
) -> ResultsResponse:
    found = gateway.runtime.cache.get(image_id, key.tenant(collection))
    if not key.allows(Scope.FACES):  # faces are biometric data: their own scope
        found = [result for result in found if result.task != "face"]
    if not found:
        raise ApiError(
            ApiErrorCode.NOT_FOUND,
            f"no result for image {image_id!r} on this gateway (it keeps the results of the "
            f"last {gateway.limits.results_cache_images:,} images it saw, in memory)",
        )
    kept = [r.model_copy(update={"reply": None}) for r in found]
    return ResultsResponse(request_id=request_id(request), image_id=image_id, results=kept)


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
async def readyz(gateway: Api) -> JSONResponse:
    ready = gateway.runtime.ready
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


def create_app(settings: Settings, runtime: GatewayRuntime | None = None) -> FastAPI:
    """Cheap (no I/O): the runtime starts and stops with the app's lifespan."""
    live = runtime or GatewayRuntime(settings)

    @asynccontextmanager
    async def lifespan(served: FastAPI) -> AsyncIterator[None]:
        served.state.check_exposure()  # no keys on a network address: refuse to start
        try:  # stop() also undoes a start() that failed part-way
            await live.start()
            yield
        finally:
            await live.stop()
            await asyncio.to_thread(close_book, served.state)  # Milvus calls block

    app = FastAPI(
        title="imagestream gateway",
        version="1",
        description=__doc__,
        lifespan=lifespan,
    )
    app.state.gateway = Gateway(settings, live)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.gateway.max_request_bytes)
    install_auth(app, settings.gateway)  # keys, rate limits, CORS: inside the request ids
    app.add_middleware(RequestIdMiddleware)  # added last: outermost, so every answer has an id
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(search)  # POST /v1/search
    app.include_router(demo)  # GET /demo (the demo page)
    app.include_router(people)  # /v1/people...
    return app
