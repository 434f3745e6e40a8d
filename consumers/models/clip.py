"""CLIP (and SigLIP) image and text embeddings from any Hugging Face checkpoint or folder.

Images are preprocessed with ``PixelSpec`` (consumers/models/pixels.py). Every task
of one process that names the same checkpoint (clip, labels, classify, search) shares
one loaded model: the weights are read once and the calls already run on one device
thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from consumers.config.settings import Settings, TaskSettings
from consumers.models.encoder import Encoder, Vectors
from consumers.models.engines import EngineTower, TowerSpec, encoder_tower, example_pixels
from consumers.models.pixels import PixelSpec, preprocess_image
from consumers.models.weights import (
    ModelKind,
    load_with_fallback,
)

KIND = ModelKind(family="clip", task="clip", label="CLIP")
__all__ = ["KIND", "ClipEncoder", "PixelSpec"]


def _features(output: Any) -> torch.Tensor:
    """transformers 5 returns a ModelOutput whose pooler_output is the projection."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise TypeError(f"unexpected feature output {type(output).__name__}")


class _ImageTower(torch.nn.Module):
    """The image tower as one module, for export (consumers/models/engines.py)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixel_values))


class _TextTower(_ImageTower):
    def forward(  # the text tower takes tokens, not pixels
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        kwargs = {"input_ids": input_ids}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        return _features(self.model.get_text_features(**kwargs))


@dataclass(frozen=True)
class _Bundle:
    model: Any
    processor: Any
    tokenizer: Any


# Loaded checkpoints by (source, device, dtype), shared by every ClipEncoder of the process.
_SHARED: dict[tuple[str, str, torch.dtype], _Bundle] = {}
_SHARED_LOCK = threading.Lock()


class ClipEncoder(Encoder):
    name = "clip"

    def __init__(self, task: TaskSettings, settings: Settings) -> None:
        super().__init__(task, settings)
        self._bundle: _Bundle | None = None
        self._pixels: PixelSpec | None = None
        self.max_text_length = 0
        # Exported towers when the engine is not torch: "image" and "text".
        self.towers: dict[str, EngineTower] = {}

    def load(self) -> None:
        spec, bundle = load_with_fallback(
            self.task_settings, KIND, Path(self.settings.model_cache_dir), self._load_bundle
        )
        config = bundle.model.config
        self._bundle = bundle
        self._pixels = PixelSpec.from_processor(bundle.processor)
        self.min_input_side = self._pixels.min_side if self._pixels else None
        self.model_name = spec
        self.dim = int(getattr(config, "projection_dim", 0) or config.vision_config.hidden_size)
        self.max_text_length = min(
            int(bundle.tokenizer.model_max_length), int(config.text_config.max_position_embeddings)
        )
        if self.engine != "torch":
            self.towers = self._export_towers(spec)

    def _export_towers(self, spec: str) -> dict[str, EngineTower]:
        source = self.bundle.model.name_or_path or spec
        tokens = self._tokenize(["a photo", "a photo of a cat on a table"])
        return {
            "image": encoder_tower(self, TowerSpec(
                source, "image", _ImageTower(self.bundle.model),
                {"pixel_values": example_pixels(self)}, {"pixel_values": {0: "batch"}},
            )),
            "text": encoder_tower(self, TowerSpec(
                source, "text", _TextTower(self.bundle.model), tokens,
                {name: {0: "batch", 1: "tokens"} for name in tokens},
            )),
        }  # fmt: skip

    def _load_bundle(self, source: str, local_files_only: bool) -> _Bundle:
        key = (source, str(self.device), self.dtype)
        with _SHARED_LOCK:
            if key not in _SHARED:
                _SHARED[key] = self._read_bundle(source, local_files_only)
            return _SHARED[key]

    def _read_bundle(self, source: str, local_files_only: bool) -> _Bundle:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        model = AutoModel.from_pretrained(
            source, local_files_only=local_files_only, dtype=self.dtype
        )
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise TypeError(f"{type(model).__name__} is not a CLIP-style image-text model")
        # The PIL backend is what PixelSpec reimplements, and needs no torchvision.
        image_processor: Any = AutoImageProcessor  # untyped in transformers' stubs
        processor = image_processor.from_pretrained(
            source, local_files_only=local_files_only, backend="pil"
        )
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
        return _Bundle(model.to(self.device).eval(), processor, tokenizer)

    @property
    def bundle(self) -> _Bundle:
        if self._bundle is None:
            raise RuntimeError("ClipEncoder.load() has not been called")
        return self._bundle

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return preprocess_image(self._pixels, self.bundle.processor, image)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if "image" in self.towers:
            return torch.from_numpy(self.towers["image"]({"pixel_values": batch.numpy()}))
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        pixels = batch.to(self.device, self.dtype, non_blocking=True)
        with torch.inference_mode(), self.autocast():
            return _features(self.bundle.model.get_image_features(pixel_values=pixels))

    def encode_texts(self, texts: list[str]) -> Vectors:
        """L2-normalised text embeddings; blocking (run it in a thread)."""
        return self.encode_texts_with_truncation(texts)[0]

    def encode_texts_with_truncation(self, texts: list[str]) -> tuple[Vectors, list[bool]]:
        """Embeddings plus, per text, whether it was cut to the model's maximum length."""
        tokenizer, model = self.bundle.tokenizer, self.bundle.model
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32), []
        # One token of slack tells "cut" from "exactly fits" without tokenizing unbounded
        # text (which also makes the tokenizer log a warning).
        probe = tokenizer(texts, truncation=True, max_length=self.max_text_length + 1)
        lengths = [len(ids) for ids in probe["input_ids"]]
        kwargs = self._tokenize(texts)
        if "text" in self.towers:
            arrays = {name: tensor.numpy() for name, tensor in kwargs.items()}
            vectors = self.postprocess(torch.from_numpy(self.towers["text"](arrays)))
        else:
            with torch.inference_mode(), self.autocast():
                on_device = {name: tensor.to(self.device) for name, tensor in kwargs.items()}
                vectors = self.postprocess(_features(model.get_text_features(**on_device)))
        return vectors, [n > self.max_text_length for n in lengths]

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """The text tower's inputs: token ids, and the attention mask where it is used."""
        tokenizer, model = self.bundle.tokenizer, self.bundle.model
        # SigLIP was trained on text padded to the maximum length and pools the last token.
        siglip = model.config.model_type.startswith("siglip")
        tokens = tokenizer(
            texts,
            padding="max_length" if siglip else True,
            truncation=True,
            max_length=self.max_text_length,
            return_tensors="pt",
        )
        kwargs = {"input_ids": tokens["input_ids"]}
        if "attention_mask" in tokens and not siglip:
            kwargs["attention_mask"] = tokens["attention_mask"]
        return kwargs
