"""Random-weight CLIP, DINOv2 and BLIP models of given sizes, saved as their checkpoints are."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from consumers.models.presets.tokenizer import build_tokenizer

PresetBuilder = Callable[[Path], None]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def clip_preset(
    text: dict[str, int], vision: dict[str, int], projection_dim: int, tokenizer_vocab: int
) -> PresetBuilder:
    """A builder for a random-weight CLIP with these sizes (called under a fixed seed)."""

    def build(folder: Path) -> None:
        from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

        tokenizer = build_tokenizer(
            vocab_size=min(tokenizer_vocab, text["vocab_size"]),
            max_length=text["max_position_embeddings"],
        )
        ids = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}
        config = CLIPConfig(
            text_config={**text, **ids}, vision_config=vision, projection_dim=projection_dim
        )
        CLIPModel(config).save_pretrained(folder)
        side = vision["image_size"]
        processor = CLIPImageProcessorPil(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side}
        )
        processor.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return build


def dinov2_preset(
    hidden: int, layers: int, heads: int, patch: int, image_size: int, side: int, crop: int
) -> PresetBuilder:
    """A builder for a random-weight DINOv2 of these sizes (called under a fixed seed)."""

    def build(folder: Path) -> None:
        from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

        config = Dinov2Config(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            patch_size=patch,
            image_size=image_size,
        )
        Dinov2Model(config).save_pretrained(folder)
        BitImageProcessorPil(
            size={"shortest_edge": side},
            crop_size={"height": crop, "width": crop},
            image_mean=IMAGENET_MEAN,
            image_std=IMAGENET_STD,
        ).save_pretrained(folder)

    return build


def blip_preset(
    text: dict[str, int], vision: dict[str, int], side: int, tokenizer_vocab: int
) -> PresetBuilder:
    """A builder for a random-weight BLIP captioner (called under a fixed seed)."""

    def build(folder: Path) -> None:
        from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil

        tokenizer = build_tokenizer(
            vocab_size=min(tokenizer_vocab, text["vocab_size"]),
            max_length=text["max_position_embeddings"],
        )
        # BLIP starts decoding at bos and stops at sep; the byte-level tokenizer's ids.
        ids = {"bos_token_id": 0, "sep_token_id": 1, "eos_token_id": 1, "pad_token_id": 2}
        config = BlipConfig(
            text_config={**text, **ids}, vision_config={**vision, "image_size": side}
        )
        BlipForConditionalGeneration(config).save_pretrained(folder)
        BlipImageProcessorPil(size={"height": side, "width": side}).save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return build
