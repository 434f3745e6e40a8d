"""Captions from chat vision-language models (SmolVLM/Idefics3, LLaVA-NeXT, Qwen2-VL style).

Any ``AutoModelForImageTextToText`` checkpoint whose processor (``AutoProcessor``) has a
chat template: each image becomes one user turn (the image, then the prompt from
``caption.prompt``), the processor turns the batch into the model's inputs (tiles,
dynamic resolutions and image tokens are its business), and one batched ``generate``
(left padding, greedy) answers all of them; the caption is the generated tail. The
stored vector is the language model's last hidden state at the prompt, averaged over its
real tokens (image tokens included): the prefill computes it anyway.

Qwen2-VL's processor in transformers 5 also needs a video processor, which needs
torchvision; where that is missing it cannot load (the error says so).
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

DEFAULT_PROMPT = "Describe this image in one sentence."


def chat_processor(source: str, local_files_only: bool) -> Any | None:
    """The checkpoint's own processor when it has a chat template, else None (BLIP-style)."""
    from transformers import AutoProcessor

    auto: Any = AutoProcessor  # untyped in transformers' stubs
    try:
        processor = auto.from_pretrained(source, local_files_only=local_files_only)
    except (OSError, ValueError, TypeError, KeyError):
        return None  # no processor config: an image processor + tokenizer checkpoint
    return processor if getattr(processor, "chat_template", None) else None


class ChatCaptioner:
    def __init__(self, model: Any, processor: Any, prompt: str, max_new_tokens: int) -> None:
        self.model = model
        self.processor = processor
        processor.tokenizer.padding_side = "left"  # generate continues the last position
        turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        self.prompt = processor.apply_chat_template(turn, add_generation_prompt=True)
        self.max_new_tokens = max_new_tokens
        self.dim = int(model.config.get_text_config().hidden_size)

    def caption(self, images: list[Image.Image]) -> tuple[list[str], torch.Tensor]:
        """Captions and the (unnormalised) prompt features, one batched ``generate``."""
        inputs = self.processor(
            text=[self.prompt] * len(images),
            images=[[image] for image in images],
            return_tensors="pt",
            padding=True,
        ).to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                return_dict_in_generate=True,
                output_hidden_states=True,
            )
        prompt_len = inputs["input_ids"].shape[1]
        texts = self.processor.batch_decode(out.sequences[:, prompt_len:], skip_special_tokens=True)
        hidden = out.hidden_states[0][-1].float()  # prefill step, last layer: (n, len, dim)
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        features = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return [" ".join(t.split()) for t in texts], features
