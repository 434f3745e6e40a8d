"""Image preprocessing reimplemented from a Hugging Face image processor's config.

Images are preprocessed here with PIL + numpy instead of calling the Hugging Face
processor per image: the same arithmetic without its per-call overhead, and safe to run
from the decode thread pool. Configs it does not cover (padding, ``longest_edge``) go
through the processor itself.

Rescale and normalise are three in-place float32 passes over one contiguous copy of the
levels: the same float32 operations per value as the per-channel lookup table they
replace (bit-identical), at half its CPU (0.13 against 0.27 ms for a 224-pixel input on
the 2-core box). Resampling only the part a center crop keeps (PIL's ``box``) would save
a quarter of the resize, but against the processor's resize-then-crop it moved up to a
quarter of a small image's values by up to five levels (0.07% by one at 320x240), so the
resize stays whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

Floats = np.ndarray[Any, np.dtype[np.float32]]


@dataclass(frozen=True, eq=False)
class Levels:
    """uint8 levels to the model's floats: ``(level * scale - mean) / std`` per channel,
    in float32, as the processor computes them."""

    scale: np.float32
    mean: Floats  # (3, 1, 1)
    std: Floats  # (3, 1, 1)

    @classmethod
    def of(cls, scale: float, mean: Any, std: Any) -> Levels:
        def per_channel(values: Any) -> Floats:
            return np.broadcast_to(np.asarray(values, dtype=np.float32), (3,)).reshape(3, 1, 1)

        return cls(np.float32(scale), per_channel(mean), per_channel(std))

    def __call__(self, rgb: np.ndarray[Any, np.dtype[np.uint8]]) -> Floats:
        """(H, W, 3) uint8 to (3, H, W) float32."""
        pixels: Floats = np.empty((3, *rgb.shape[:2]), dtype=np.float32)
        np.copyto(pixels, rgb.transpose(2, 0, 1))
        pixels *= self.scale
        pixels -= self.mean
        pixels /= self.std
        return pixels


@dataclass(frozen=True, eq=False)
class PixelSpec:
    """What the image processor does, reduced to the steps we reimplement."""

    shortest_edge: int | None
    resize_to: tuple[int, int] | None  # (height, width), when resizing to a fixed size
    resample: Image.Resampling
    crop: tuple[int, int] | None  # (height, width)
    levels: Levels = field(repr=False)

    @classmethod
    def from_processor(cls, proc: Any) -> PixelSpec | None:
        """None when the config asks for something not reimplemented (then HF runs)."""
        size = proc.size if proc.do_resize else None
        shortest, longest = _size_field(size, "shortest_edge"), _size_field(size, "longest_edge")
        height, width = _size_field(size, "height"), _size_field(size, "width")
        if size is not None and (longest or not (shortest or (height and width))):
            return None
        if getattr(proc, "do_pad", None):
            return None
        crop = proc.crop_size if getattr(proc, "do_center_crop", False) else None
        scale = float(proc.rescale_factor) if proc.do_rescale else 1.0
        mean = np.asarray(proc.image_mean if proc.do_normalize else 0.0, dtype=np.float32)
        std = np.asarray(proc.image_std if proc.do_normalize else 1.0, dtype=np.float32)
        return cls(
            shortest_edge=shortest if size is not None and shortest else None,
            resize_to=(height, width) if size is not None and not shortest else None,
            resample=Image.Resampling(int(proc.resample)),
            crop=(_size_field(crop, "height"), _size_field(crop, "width")) if crop else None,
            levels=Levels.of(scale, mean, std),
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            image = image.convert("RGB")
        target = self.resize_to or self._shortest_edge_size(image.height, image.width)
        if target is not None and target != (image.height, image.width):
            image = image.resize((target[1], target[0]), resample=self.resample)
        if self.crop is not None:
            image = image.crop(_crop_box(self.crop, (image.height, image.width)))
        return torch.from_numpy(self.levels(np.asarray(image)))

    @property
    def min_side(self) -> int | None:
        """The shortest side the model sees: decoding need not keep more."""
        if self.shortest_edge is not None:
            return self.shortest_edge
        return min(self.resize_to) if self.resize_to else None

    def _shortest_edge_size(self, height: int, width: int) -> tuple[int, int] | None:
        if self.shortest_edge is None:
            return None
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)


def _crop_box(crop: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a ``crop`` (height, width) centred in ``size``: the
    offsets of transformers' center_crop (PIL pads outside pixels with 0)."""
    (ch, cw), (h, w) = crop, size
    top, left = (h - ch) // 2, (w - cw) // 2
    return left, top, left + cw, top + ch


def _size_field(size: Any, key: str) -> Any:
    if size is None:
        return None
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def preprocess_image(spec: PixelSpec | None, processor: Any, image: Image.Image) -> torch.Tensor:
    """One image to the model's pixel tensor, by ``spec`` when it covers the config."""
    if spec is not None:
        return spec(image)
    batch = processor(images=image.convert("RGB"), return_tensors="pt")
    pixels: torch.Tensor = batch["pixel_values"][0]
    return pixels.float()
