"""Bytes from S3 to a bounded RGB ``PIL.Image``: the one place untrusted image data is parsed.

``decode_image`` blocks (the pipeline runs it in its decode thread pool). Every way an
object can be unusable ends as an ``ItemError``: ``NOT_AN_IMAGE`` for bytes that are not
a supported, complete image, ``IMAGE_TOO_LARGE`` for images over the pixel cap, which is
checked from the header before any pixel is decoded (decompression bombs).
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from consumers.config.settings import DecodeSettings
from consumers.pipeline.item_errors import ItemError
from schemas.events import ErrorCode

T = TypeVar("T")

# An allow-list, not everything Pillow can open: formats such as EPS hand the bytes to
# Ghostscript, and rarely used decoders are where parser bugs live. ("JPEG" also admits
# MPO, the multi-picture JPEG of many phone cameras.)
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")

# What Pillow's decoders raise on malformed or truncated input (besides OSError, which
# covers UnidentifiedImageError and "image file is truncated").
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)

# ``image.info[SOURCE_SIZE]``: the (width, height) of the upright source image, before any
# downscaling, so that tasks can report boxes in the caller's pixel coordinates.
SOURCE_SIZE = "imagestream.source_size"
# EXIF orientations that turn the picture by 90 or 270 degrees (width and height swap).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)

# Transparent pixels carry arbitrary (often black) colour; encoders see what a viewer would
# show on a page, so flatten onto white.
_BACKGROUND = (255, 255, 255)

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),
    (b"BM", 0, "image/bmp"),
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
    (b"ftypavif", 4, "image/avif"),
)


def decode_image(data: bytes, settings: DecodeSettings, min_side: int | None = None) -> Image.Image:
    """Decode ``data`` to an RGB image whose longest side is at most ``settings.max_side``.

    ``min_side`` is what the consumer of the image needs on its shortest side (an encoder
    that resizes to 224 px needs no more): JPEGs then decode at the smallest DCT scale
    that still covers it. EXIF orientation is applied, animated images give their first
    frame; the source size is kept in ``image.info[SOURCE_SIZE]``. Raises ``ItemError``
    (``NOT_AN_IMAGE`` or ``IMAGE_TOO_LARGE``) for unusable input.
    """
    if not data:
        raise ItemError(ErrorCode.NOT_AN_IMAGE, "the object is empty (0 bytes), not an image")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as src:
            _check_pixels(src.size, settings.max_pixels)
            source_size = _upright_size(src)
            _draft(src, settings.max_side, min_side)
            # Decode everything now so a truncated file fails here, as this item's error,
            # and not later inside the encoder's batch.
            src.load()
            ImageOps.exif_transpose(src, in_place=True)
            image = _to_rgb(src)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own bomb guard fires inside open(), before our check can; the warning
        # arrives as an exception wherever warnings are errors (the test suite).
        raise ItemError(ErrorCode.IMAGE_TOO_LARGE, f"image refused as too large: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ItemError(
            ErrorCode.NOT_AN_IMAGE,
            f"not a supported image ({len(data)} bytes; supported: {', '.join(FORMATS)})",
        ) from exc
    except _DECODE_ERRORS as exc:
        raise ItemError(ErrorCode.NOT_AN_IMAGE, f"cannot decode the image: {exc}") from exc
    image.thumbnail((settings.max_side, settings.max_side), Image.Resampling.LANCZOS)
    image.info[SOURCE_SIZE] = source_size
    return image


def decode_and_prepare(
    data: bytes, settings: DecodeSettings, prepare: Callable[[Image.Image], T], min_side: int | None
) -> T:
    """What the model takes from ``data``: decoded (at the scale ``min_side`` allows) and
    then ``prepare``d (a task's or an encoder's), in one call on the decode pool. The
    pipeline's batches and the gateway's encoder requests (``consumers/search/rpc.py``)
    both go this way."""
    return prepare(decode_image(data, settings, min_side))


def sniff_content_type(data: bytes) -> str | None:
    """The MIME type of a supported image format from its magic bytes, else ``None``."""
    for magic, offset, mime in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            if mime == "image/webp" and not data.startswith(b"RIFF"):
                continue
            return mime
    return None


def _upright_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    if image.getexif().get(ExifTags.Base.Orientation) in _SWAPPING_ORIENTATIONS:
        return height, width
    return width, height


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ItemError(
            ErrorCode.IMAGE_TOO_LARGE,
            f"image is {width}x{height} = {width * height:,} pixels, "
            f"over the limit of {max_pixels:,}",
        )


def _draft(image: Image.Image, max_side: int, min_side: int | None) -> None:
    """Let the JPEG decoder scale by 1/2, 1/4 or 1/8 while decoding (a no-op elsewhere).

    Decoding at reduced scale skips most of the IDCT work: a 12 MP photo headed for
    512 px decodes several times faster, a 640x480 photo headed for 224 px about 3x.
    Pillow never drafts below the requested size, so the result keeps at least
    ``max_side`` on its longest side (or ``min_side`` on its shortest, when given) and
    the final resample still has full detail to work with.
    """
    if image.format not in ("JPEG", "MPO"):
        return
    width, height = image.size
    scale = max_side / max(width, height)
    if min_side is not None:
        scale = min(scale, min_side / min(width, height))
    if scale > 0.5:
        return
    image.draft("RGB", (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))))


def _to_rgb(image: Image.Image) -> Image.Image:
    """A new RGB image from any mode; alpha is flattened onto white, 16-bit is rescaled."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        image = _high_depth_to_l(image)
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, _BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    # Pillow's own convert() clips 16-bit values at 255 (a white image); scale instead.
    # Wide modes without a declared depth are taken as 16-bit when their values say so.
    pixels = np.asarray(image, dtype=np.float32)
    if image.mode.startswith("I;16") or float(pixels.max(initial=0.0)) > 255.0:
        pixels = pixels / 257.0
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
