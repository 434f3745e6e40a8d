"""Multipart input with limits: every way a form can be refused has its own typed error.

A file part is an image, a plain field is a text; the form key names each one in the
response. Images are capped in bytes and recognised by their magic bytes (the formats
the decoder accepts); the full decode happens where the model is.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from fastapi import Request
from starlette.datastructures import UploadFile

from consumers.config.settings import GatewaySettings
from consumers.gateway.errors import ApiError, ApiErrorCode
from consumers.pipeline.decode import sniff_content_type

# A form of texts only may come URL-encoded (what browsers and clients send without files).
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


@dataclass(frozen=True)
class Image:
    data: bytes
    content_type: str


@dataclass
class Parts:
    images: dict[str, Image] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)


async def read_image(upload: UploadFile, key: str, limits: GatewaySettings) -> Image:
    limit = limits.max_image_bytes
    if upload.size is not None and upload.size > limit:
        raise ApiError(
            ApiErrorCode.IMAGE_TOO_LARGE,
            f"{key}: {upload.size:,} bytes, over the limit of {limit:,}",
            key,
        )
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(ApiErrorCode.IMAGE_TOO_LARGE, f"{key}: over {limit:,} bytes", key)
    content_type = sniff_content_type(data)
    if content_type is None:
        what = "empty" if not data else "not a JPEG, PNG, WebP, GIF, BMP, TIFF or AVIF image"
        raise ApiError(ApiErrorCode.NOT_AN_IMAGE, f"{key}: {what}", key)
    return Image(data, content_type)


def check_text(text: str, key: str, limits: GatewaySettings) -> str:
    if not text.strip():
        raise ApiError(ApiErrorCode.INVALID_REQUEST, f"{key}: the text is empty", key)
    if len(text) > limits.max_text_chars:
        raise ApiError(
            ApiErrorCode.TEXT_TOO_LONG,
            f"{key}: {len(text):,} characters, over the limit of {limits.max_text_chars:,}",
            key,
        )
    return text


async def read_parts(request: Request, limits: GatewaySettings) -> Parts:
    """Every part of the form, keyed by form key; duplicate keys are refused."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(FORM_TYPES):
        raise ApiError(ApiErrorCode.INVALID_REQUEST, "send multipart/form-data")
    # Starlette stops parsing early past these (a 400 naming the limit); the exact
    # counts get their own code below.
    form = await request.form(
        max_files=limits.max_items,
        max_fields=limits.max_items,
        max_part_size=4 * limits.max_text_chars + 1024,
    )
    try:
        items = form.multi_items()
        repeated = [key for key, n in Counter(key for key, _ in items).items() if n > 1]
        if repeated:
            raise ApiError(ApiErrorCode.INVALID_REQUEST, f"repeated form key {repeated[0]!r}")
        if len(items) > limits.max_items:
            raise ApiError(
                ApiErrorCode.TOO_MANY_ITEMS,
                f"{len(items)} images and texts, over the limit of {limits.max_items}",
            )
        parts = Parts()
        for key, value in items:
            if isinstance(value, str):
                parts.texts[key] = check_text(value, key, limits)
            else:
                parts.images[key] = await read_image(value, key, limits)
        return parts
    finally:
        await form.close()
