"""Captions from a Hugging Face image-to-text model (default BLIP base), batched.

Any checkpoint that ``AutoModelForImageTextToText`` loads and whose image processor
yields fixed-size ``pixel_values`` works (BLIP, GIT, ViT-GPT2-style encoder-decoders).
Checkpoints whose processor has a chat template (SmolVLM/Idefics3, LLaVA-NeXT,
Qwen2-VL) go through ``consumers/models/chat_captioner.py`` instead: the prompt from
settings in a chat turn, the model's own processor, one batched ``generate``.

The stored vector of a caption row is the captioner's own pooled image feature,
captured with a forward hook on its vision tower while ``generate`` runs: Milvus needs a
vector per row, and this one is real and costs nothing extra (chat models: the prompt's
mean last hidden state, see there).

Images are first shrunk by seed 002's policy: every side times ``halve_rate``, but the
shorter side never below ``min_size`` (and never enlarged).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from consumers.config.settings import CaptionSettings, Settings, TaskSettings
from consumers.models.chat_captioner import DEFAULT_PROMPT, ChatCaptioner, chat_processor
from consumers.models.encoder import Encoder, Vectors, collate
from consumers.models.pixels import PixelSpec, preprocess_image
from consumers.models.weights import (
    ModelKind,
    load_with_fallback,
)

KIND = ModelKind(family="caption", task="caption", label="captioning")


def shrink(image: Image.Image, halve_rate: float, min_size: int) -> Image.Image:
    """Seed 002's downscale: sides times ``halve_rate``, the shorter kept >= ``min_size``."""
    scale = max(halve_rate, min_size / max(1, min(image.size)))
    if scale >= 1.0:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)


def vision_tower(model: Any) -> torch.nn.Module:
    """The module whose pooled output describes the image (BLIP, GIT, encoder-decoders)."""
    for owner in (model, getattr(model, "model", None), getattr(model, "git", None)):
        for name in ("vision_model", "image_encoder", "vision_tower"):
            tower = getattr(owner, name, None)
            if isinstance(tower, torch.nn.Module):
                return tower
    if getattr(model.config, "is_encoder_decoder", False):
        encoder: torch.nn.Module = model.get_encoder()
        return encoder
    raise TypeError(f"{type(model).__name__}: no vision tower found to describe the image by")


def _pooled(output: Any) -> torch.Tensor:
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    hidden: torch.Tensor = output[0] if isinstance(output, tuple) else output.last_hidden_state
    return hidden.mean(dim=1)


@dataclass(frozen=True)
class _Bundle:
    model: Any
    processor: Any
    tokenizer: Any
    tower: torch.nn.Module | None  # None for chat models
    chat: ChatCaptioner | None = None


class CaptionEncoder(Encoder):
    name = "caption"

    def __init__(self, task: TaskSettings, settings: Settings) -> None:
        super().__init__(task, settings)
        self.options = task if isinstance(task, CaptionSettings) else CaptionSettings()
        self._bundle: _Bundle | None = None
        self._pixels: PixelSpec | None = None
        self._captured: list[torch.Tensor] = []

    def load(self) -> None:
        spec, bundle = load_with_fallback(
            self.task_settings, KIND, Path(self.settings.model_cache_dir), self._load_bundle
        )
        self._bundle = bundle
        self.model_name = spec
        if bundle.chat is not None:  # pixels are the processor's business; no hook
            self.dim = bundle.chat.dim
            return
        self._pixels = PixelSpec.from_processor(bundle.processor)
        if self._pixels is not None and self._pixels.min_side is not None:
            # Decoding may drop detail down to what both the model and the policy keep.
            self.min_input_side = max(self._pixels.min_side, self.options.min_size)
        vision = bundle.tower or vision_tower(bundle.model)
        config = getattr(vision, "config", None)
        self.dim = int(getattr(config, "hidden_size", 0) or bundle.model.config.hidden_size)
        # The hook sees the tower's output wherever generate() calls it from.
        vision.register_forward_hook(self._capture)

    def _load_bundle(self, source: str, local_files_only: bool) -> _Bundle:
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        auto: Any = AutoModelForImageTextToText  # untyped in transformers' stubs
        model = auto.from_pretrained(source, local_files_only=local_files_only, dtype=self.dtype)
        chat = chat_processor(source, local_files_only)
        if chat is not None:
            model = model.to(self.device).eval()
            prompt = self.options.prompt or DEFAULT_PROMPT
            captioner = ChatCaptioner(model, chat, prompt, self.options.max_new_tokens)
            return _Bundle(model, chat, chat.tokenizer, None, captioner)
        image_processor: Any = AutoImageProcessor  # untyped in transformers' stubs
        processor = image_processor.from_pretrained(
            source, local_files_only=local_files_only, backend="pil"
        )
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
        model = model.to(self.device).eval()
        return _Bundle(model, processor, tokenizer, vision_tower(model))

    @property
    def bundle(self) -> _Bundle:
        if self._bundle is None:
            raise RuntimeError("CaptionEncoder.load() has not been called")
        return self._bundle

    def _capture(self, _module: Any, _inputs: Any, output: Any) -> None:
        self._captured.append(_pooled(output))

    def prepare_input(self, image: Image.Image) -> torch.Tensor | Image.Image:
        """What ``caption`` takes: a pixel tensor, or for a chat model the shrunk image
        (its processor batches images of different sizes itself)."""
        if self.bundle.chat is not None:
            return shrink(image, self.options.halve_rate, self.options.min_size)
        return self.preprocess(image)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        small = shrink(image, self.options.halve_rate, self.options.min_size)
        return preprocess_image(self._pixels, self.bundle.processor, small)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """The pooled image feature alone (what ``caption`` stores beside each caption)."""
        if self.bundle.tower is None:
            raise TypeError(f"{self.model_name}: a chat model's feature comes from caption()")
        with torch.inference_mode():
            output = self.bundle.tower(pixel_values=batch.to(self.device, self.dtype))
        self._captured.clear()
        return _pooled(output)

    def caption(self, inputs: list[Any]) -> tuple[list[str], Vectors]:
        """Captions and L2-normalised image features, one batched ``generate``; blocking.
        ``inputs`` are what ``prepare_input`` returned."""
        if self.bundle.chat is not None:
            texts, features = self.bundle.chat.caption(inputs)
            return texts, self.postprocess(features)
        return self._caption_pixels(inputs)

    def _caption_pixels(self, tensors: list[torch.Tensor]) -> tuple[list[str], Vectors]:
        bundle, n = self.bundle, len(tensors)
        pixels = collate(tensors).to(self.device, self.dtype)
        kwargs: dict[str, Any] = {"max_new_tokens": self.options.max_new_tokens}
        if self.options.prompt:
            tokens = bundle.tokenizer([self.options.prompt] * n, return_tensors="pt")
            kwargs["input_ids"] = tokens["input_ids"].to(self.device)
            kwargs["attention_mask"] = tokens["attention_mask"].to(self.device)
        self._captured.clear()
        with torch.inference_mode():
            ids = bundle.model.generate(pixel_values=pixels, do_sample=False, **kwargs)
        if not self._captured:
            raise RuntimeError(f"{self.model_name}: generate() did not run the vision tower")
        texts = bundle.tokenizer.batch_decode(ids, skip_special_tokens=True)
        vectors = self.postprocess(self._captured[0][:n])
        return [" ".join(t.split()) for t in texts], vectors
