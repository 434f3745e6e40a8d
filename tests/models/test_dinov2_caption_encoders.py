"""DINOv2 and captioning encoders on tiny random-weight models loaded via from_pretrained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from consumers.config.settings import CaptionSettings, ClipSettings, Dinov2Settings, Settings
from consumers.models.captioner import CaptionEncoder, shrink
from consumers.models.dinov2 import Dinov2Encoder
from consumers.pipeline.item_errors import ModelLoadError


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [
        Image.fromarray(rng.integers(0, 255, (90 + 10 * i, 120, 3), dtype=np.uint8))
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("size", "rate", "min_size", "expected"),
    [
        ((1000, 800), 0.5, 10, (500, 400)),  # seed 002's example: halve every side
        ((1000, 800), 0.5, 600, (750, 600)),  # the shorter side stops at min_size
        ((300, 200), 0.5, 384, (300, 200)),  # never enlarged
        ((1000, 800), 1.0, 10, (1000, 800)),  # rate 1 = off
    ],
)
def test_shrink_follows_halve_rate_and_min_size(
    size: tuple[int, int], rate: float, min_size: int, expected: tuple[int, int]
) -> None:
    assert shrink(Image.new("RGB", size), rate, min_size).size == expected


def test_dinov2_features_are_normalised_and_match_the_hf_processor(cache: Path) -> None:
    settings = Settings(
        _env_file=None, model_cache_dir=cache, dinov2=Dinov2Settings(model="random:tiny")
    )
    encoder = Dinov2Encoder(settings.dinov2, settings)
    encoder.load()
    images = _images(3)
    tensors = [encoder.preprocess(image) for image in images]
    reference = encoder.bundle.processor(images=images[0], return_tensors="pt")["pixel_values"][0]
    assert np.allclose(tensors[0].numpy(), reference.numpy(), atol=1e-5)
    vectors = encoder.encode_images(tensors)
    assert vectors.shape == (3, encoder.dim) == (3, 32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])


def test_dinov2_refuses_a_model_of_another_kind(cache: Path) -> None:
    clip = Settings(_env_file=None, model_cache_dir=cache, clip=ClipSettings(model="random:tiny"))
    from consumers.models.clip import ClipEncoder

    ClipEncoder(clip.clip, clip).load()  # builds the CLIP folder
    folder = next(cache.glob("random-clip-tiny"))
    settings = Settings(
        _env_file=None, model_cache_dir=cache, dinov2=Dinov2Settings(model=str(folder))
    )
    with pytest.raises(ModelLoadError, match="not a DINOv2 model"):
        Dinov2Encoder(settings.dinov2, settings).load()


def test_captions_are_batched_prompted_and_bounded(cache: Path) -> None:
    options = CaptionSettings(model="random:tiny", prompt="a picture of", max_new_tokens=5)
    settings = Settings(_env_file=None, model_cache_dir=cache, caption=options)
    encoder = CaptionEncoder(settings.caption, settings)
    encoder.load()
    tensors = [encoder.preprocess(image) for image in _images(3)]
    captions, vectors = encoder.caption(tensors)
    assert len(captions) == 3
    for caption in captions:
        assert caption.startswith("a picture of")  # BLIP continues the prompt
    encoder.options = options.model_copy(update={"max_new_tokens": 1})
    shorter, _ = encoder.caption(tensors)
    assert all(len(a) < len(b) for a, b in zip(shorter, captions, strict=True))
    # The stored vector is the vision tower's pooled feature, the same as encode_images.
    assert vectors.shape == (3, encoder.dim)
    assert np.allclose(vectors, encoder.encode_images(tensors), atol=1e-5)
