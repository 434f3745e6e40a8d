"""Chat vision-language captioners (consumers/models/chat_captioner.py) on random weights.

Two families, built from tiny configs and saved with ``save_pretrained`` as ``random:``
presets, then loaded through the same ``from_pretrained`` path as a hub checkpoint:
Idefics3 (SmolVLM's architecture, tiled images) and LLaVA-NeXT (any-resolution crops).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from consumers.config.settings import CaptionSettings, Settings
from consumers.models.captioner import CaptionEncoder
from consumers.models.chat_captioner import ChatCaptioner


def _images() -> list[Image.Image]:
    """Three sizes and shapes: the processors tile or crop each differently."""
    rng = np.random.default_rng(1)
    sizes = [(200, 100), (90, 160), (64, 64)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.mark.parametrize("preset", ["tiny-idefics3", "tiny-llava-next"])
def test_a_chat_checkpoint_captions_a_batch_like_one_image_at_a_time(
    preset: str, model_cache: Path
) -> None:
    options = CaptionSettings(
        model=f"random:{preset}", device="cpu", prompt="What is shown?", max_new_tokens=5
    )
    encoder = CaptionEncoder(options, Settings(_env_file=None, model_cache_dir=model_cache))
    encoder.load()
    chat = encoder.bundle.chat
    assert isinstance(chat, ChatCaptioner)
    assert "What is shown?" in chat.prompt  # the settings' prompt, in the model's template
    assert (encoder.model_name, encoder.dim) == (f"random:{preset}", 32)
    inputs = [encoder.prepare_input(image) for image in _images()]
    assert all(isinstance(x, Image.Image) for x in inputs)  # the processor sizes them

    captions, vectors = encoder.caption(inputs)
    assert len(captions) == 3
    assert all(isinstance(c, str) and c for c in captions)
    assert vectors.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Left padding and attention masks: the batch answers as each image alone would.
    alone = [encoder.caption([x]) for x in inputs]
    assert [c for (c,), _ in alone] == captions
    np.testing.assert_allclose(np.concatenate([v for _, v in alone]), vectors, atol=1e-4)
