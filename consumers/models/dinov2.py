"""DINOv2 image features (``facebook/dinov2-small`` by default): a second vector space.

The feature is the model's pooled output, i.e. the layer-normed CLS token, the image-level
descriptor DINOv2 was trained to make linearly separable; L2-normalised like every
stored vector so COSINE search ranks by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from consumers.models.encoder import Encoder
from consumers.models.engines import EngineTower, TowerSpec, encoder_tower, example_pixels
from consumers.models.pixels import PixelSpec, preprocess_image
from consumers.models.weights import ModelKind, load_with_fallback

KIND = ModelKind(family="dinov2", task="dinov2", label="DINOv2")


class _Pooled(torch.nn.Module):
    """The model's pooled output as one module, for export (consumers/models/engines.py)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled: torch.Tensor = self.model(pixel_values=pixel_values).pooler_output
        return pooled


@dataclass(frozen=True)
class _Bundle:
    model: Any
    processor: Any


class Dinov2Encoder(Encoder):
    name = "dinov2"
    _bundle: _Bundle | None = None
    _pixels: PixelSpec | None = None
    tower: EngineTower | None = None  # the exported model when the engine is not torch

    def load(self) -> None:
        spec, bundle = load_with_fallback(
            self.task_settings, KIND, Path(self.settings.model_cache_dir), self._load_bundle
        )
        self._bundle = bundle
        self._pixels = PixelSpec.from_processor(bundle.processor)
        self.min_input_side = self._pixels.min_side if self._pixels else None
        self.model_name = spec
        self.dim = int(bundle.model.config.hidden_size)
        if self.engine != "torch":
            source = bundle.model.name_or_path or spec
            self.tower = encoder_tower(self, TowerSpec(
                source, "image", _Pooled(bundle.model),
                {"pixel_values": example_pixels(self)}, {"pixel_values": {0: "batch"}},
            ))  # fmt: skip

    def _load_bundle(self, source: str, local_files_only: bool) -> _Bundle:
        from transformers import AutoImageProcessor, AutoModel

        model = AutoModel.from_pretrained(
            source, local_files_only=local_files_only, dtype=self.dtype
        )
        if model.config.model_type not in ("dinov2", "dinov2_with_registers"):
            raise TypeError(f"{type(model).__name__} is not a DINOv2 model")
        image_processor: Any = AutoImageProcessor  # untyped in transformers' stubs
        processor = image_processor.from_pretrained(
            source, local_files_only=local_files_only, backend="pil"
        )
        return _Bundle(model.to(self.device).eval(), processor)

    @property
    def bundle(self) -> _Bundle:
        if self._bundle is None:
            raise RuntimeError("Dinov2Encoder.load() has not been called")
        return self._bundle

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return preprocess_image(self._pixels, self.bundle.processor, image)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.tower is not None:
            return torch.from_numpy(self.tower({"pixel_values": batch.numpy()}))
        pixels = batch.to(self.device, self.dtype)
        with torch.inference_mode(), self.autocast():
            pooled: torch.Tensor = self.bundle.model(pixel_values=pixels).pooler_output
        return pooled
