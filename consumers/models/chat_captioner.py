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

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from consumers.models.weights import build_tokenizer, register_preset

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


def _chat_tokenizer(specials: list[str]) -> Any:
    tokenizer = build_tokenizer(vocab_size=512, max_length=4096)
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    return tokenizer


def _llama(tokenizer: Any, eos: str) -> dict[str, Any]:
    """A two-layer Llama text model for the tiny presets."""
    return {
        "model_type": "llama",
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 4096,
        "bos_token_id": 0,
        "eos_token_id": tokenizer.convert_tokens_to_ids(eos),
        "pad_token_id": 2,
    }


# Chat templates in the families' shapes: a user turn holding the image and the prompt.
IDEFICS3_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}:{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %} {{ c['text'] }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
LLAVA_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


@register_preset("caption", "tiny-idefics3")
def _tiny_idefics3(folder: Path) -> None:
    """SmolVLM's architecture (Idefics3): images split into 32 px tiles plus a global view."""
    import transformers
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor

    tokenizer = _chat_tokenizer(
        ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    )
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    config = Idefics3Config(
        text_config=_llama(tokenizer, "<end_of_utterance>"),
        vision_config={**vision, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    Idefics3ForConditionalGeneration(config).save_pretrained(folder)
    pixels: Any = getattr(transformers, "Idefics3ImageProcessorPil", None)
    images = pixels(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    # (32 / 8)^2 patches, merged 2x2 by the scale factor: 4 image tokens per tile.
    processor = Idefics3Processor(
        images, tokenizer, chat_template=IDEFICS3_TEMPLATE, image_seq_len=4
    )
    processor.save_pretrained(folder)


@register_preset("caption", "tiny-llava-next")
def _tiny_llava_next(folder: Path) -> None:
    """LLaVA-NeXT's architecture: a CLIP vision tower over any-resolution crops."""
    import transformers
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor

    tokenizer = _chat_tokenizer(["<image>", "<|im_end|>"])
    grid = [[32, 32], [32, 64], [64, 32], [64, 64]]
    vision = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64}
    config = LlavaNextConfig(
        text_config=_llama(tokenizer, "<|im_end|>"),
        vision_config={
            **vision,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
            "projection_dim": 32,
        },
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=grid,
        vision_feature_layer=-1,
    )
    LlavaNextForConditionalGeneration(config).save_pretrained(folder)
    pixels: Any = getattr(transformers, "LlavaNextImageProcessorPil", None)
    images = pixels(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=grid
    )
    llava: Any = LlavaNextProcessor  # untyped in transformers' stubs
    processor = llava(
        images,
        tokenizer,
        chat_template=LLAVA_TEMPLATE,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token the default strategy drops
    )
    processor.save_pretrained(folder)
