"""Bytes from S3 to a bounded RGB ``PIL.Image``: the one place untrusted image data is parsed.

``decode_image`` blocks (the pipeline runs it in its decode thread pool). Every way an
object can be unusable ends as an ``ItemError``: ``NOT_AN_IMAGE`` for bytes that are not
a supported, complete image, ``IMAGE_TOO_LARGE`` for images over the pixel cap, which is
checked from the header before any pixel is decoded (decompression bombs).
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from consumers.errors import ItemError
from consumers.settings import DecodeSettings
from schemas.events import ErrorCode

# An allow-list, not everything Pillow can open: formats such as EPS hand the bytes to
# Ghostscript, and rarely used decoders are where parser bugs live. ("JPEG" also admits
# MPO, the multi-picture JPEG of many phone cameras.)
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")

# What Pillow's decoders raise on malformed or truncated input (besides OSError, which
# covers UnidentifiedImageError and "image file is truncated").
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)

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


def decode_image(data: bytes, settings: DecodeSettings) -> Image.Image:
    """Decode ``data`` to an RGB image whose longest side is at most ``settings.max_side``.

    EXIF orientation is applied, animated images give their first frame. Raises
    ``ItemError`` (``NOT_AN_IMAGE`` or ``IMAGE_TOO_LARGE``) for unusable input.
    """
    if not data:
        raise ItemError(ErrorCode.NOT_AN_IMAGE, "the object is empty (0 bytes), not an image")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as src:
            _check_pixels(src.size, settings.max_pixels)
            _draft(src, settings.max_side)
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
    return image


def sniff_content_type(data: bytes) -> str | None:
    """The MIME type of a supported image format from its magic bytes, else ``None``."""
    for magic, offset, mime in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            if mime == "image/webp" and not data.startswith(b"RIFF"):
                continue
            return mime
    return None


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ItemError(
            ErrorCode.IMAGE_TOO_LARGE,
            f"image is {width}x{height} = {width * height:,} pixels, "
            f"over the limit of {max_pixels:,}",
        )


def _draft(image: Image.Image, max_side: int) -> None:
    """Let the JPEG decoder scale by 1/2, 1/4 or 1/8 while decoding (a no-op elsewhere).

    Decoding at reduced scale skips most of the IDCT work: a 12 MP photo headed for
    512 px decodes several times faster. The requested size keeps at least ``max_side``
    on the longest side, so the final resample still has full detail to work with.
    """
    width, height = image.size
    longest = max(width, height)
    if image.format not in ("JPEG", "MPO") or longest <= 2 * max_side:
        return
    scale = max_side / longest
    image.draft("RGB", (max(1, round(width * scale)), max(1, round(height * scale))))


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
