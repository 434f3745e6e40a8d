"""Tiny random-weight chat vision-language captioners (Idefics3, LLaVA-NeXT) for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from consumers.models.presets.tokenizer import build_tokenizer


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


def tiny_idefics3(folder: Path) -> None:
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


def tiny_llava_next(folder: Path) -> None:
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
