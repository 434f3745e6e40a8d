"""Synthetic, photo-like JPEGs for load tests.

Pure noise compresses badly and a flat colour compresses to nothing; neither costs what a
camera picture costs to fetch and decode. These are smooth gradients with blurred shapes
and mild sensor-like noise, which JPEG-compress to 45-115 KB at 640x480 (quality 85-92),
the range of a downscaled phone photo. Each seed gives a different, reproducible image.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

WIDTH, HEIGHT = 640, 480


@cache
def _noise(height: int, width: int) -> np.ndarray:
    """One field of unit Gaussian noise twice the image size; images crop it at random
    offsets (generating fresh noise per image would triple the generation time)."""
    rng = np.random.default_rng(0)
    return rng.normal(0.0, 1.0, (height * 2, width * 2, 3)).astype(np.float32)


def photo_like(seed: int, width: int = WIDTH, height: int = HEIGHT) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.ogrid[0:height, 0:width]
    start, end = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, np.pi)
    ramp = (x * np.cos(angle) + y * np.sin(angle)) / (width + height) + 0.5
    t = ramp.clip(0, 1).astype(np.float32)[..., None]
    image = Image.fromarray((start + (end - start) * t).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 14))):
        x0, y0 = int(rng.integers(-100, width)), int(rng.integers(-100, height))
        sx, sy = (int(v) for v in rng.integers(30, 300, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x0 + sx, y0 + sy), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(2))
    oy, ox = int(rng.integers(0, height)), int(rng.integers(0, width))
    noise = _noise(height, width)[oy : oy + height, ox : ox + width]
    pixels = np.asarray(image, dtype=np.float32) + rng.uniform(5, 10) * noise
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def photo_jpeg(seed: int, width: int = WIDTH, height: int = HEIGHT) -> bytes:
    rng = np.random.default_rng(seed + 1_000_003)
    buffer = io.BytesIO()
    photo_like(seed, width, height).save(buffer, format="JPEG", quality=int(rng.integers(85, 93)))
    return buffer.getvalue()


def jpegs(count: int, first_seed: int = 0) -> Iterator[bytes]:
    for seed in range(first_seed, first_seed + count):
        yield photo_jpeg(seed)
