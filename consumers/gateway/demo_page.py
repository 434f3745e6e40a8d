"""The demo page (seed 001's UI, grown).

- ``GET /demo``: one self-contained HTML page (``demo.html``, no external assets): upload
  an image, see its labels, faces (boxes drawn), caption, classes and similar images; a
  text box searches the images by text (``POST /v1/search``, ``consumers/gateway/search.py``).
- ``GET /demo/images/{image_id}``: an image uploaded through this gateway, for thumbnails.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from consumers.gateway.auth import SearchKey
from consumers.gateway.deps import Api
from consumers.gateway.errors import ApiError, ApiErrorCode
from consumers.pipeline.decode import sniff_content_type
from consumers.pipeline.item_errors import ItemError
from consumers.vectorstore.keys import staged_key

router = APIRouter()


@cache
def _page() -> str:
    return files("consumers.gateway").joinpath("demo.html").read_text(encoding="utf-8")


@router.get("/demo", response_class=HTMLResponse, include_in_schema=False)
async def demo_page() -> HTMLResponse:
    return HTMLResponse(_page())


@router.get("/demo/images/{image_id:path}", include_in_schema=False)
async def demo_image(
    gateway: Api, caller: SearchKey, image_id: str, collection: str | None = None
) -> Response:
    tenant = caller.tenant(collection)
    key = staged_key(gateway.limits.staging_prefix, tenant, "images", image_id)
    try:
        data = await gateway.runtime.s3.get(gateway.settings.s3.bucket, key)
    except ItemError as exc:
        raise ApiError(ApiErrorCode.NOT_FOUND, f"no image {image_id!r} on this gateway") from exc
    kind = sniff_content_type(data) or "application/octet-stream"
    return Response(data, media_type=kind, headers={"Cache-Control": "max-age=3600"})
