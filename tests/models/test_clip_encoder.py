"""The CLIP encoder on a random-weight ``random:tiny`` model built through save/from_pretrained."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from consumers.config.settings import ClipSettings, Settings
from consumers.models import presets
from consumers.models.clip import ClipEncoder, PixelSpec
from consumers.models.registry import encoder_class
from consumers.pipeline.item_errors import ModelLoadError


def make_settings(cache: Path, model: str, fallback: str | None = None) -> Settings:
    # model_construct skips the IMAGESTREAM_* environment and .env files entirely.
    clip = ClipSettings(model=model, fallback_model=fallback, device="cpu")
    return Settings.model_construct(model_cache_dir=cache, clip=clip)


def load_encoder(cache: Path, model: str, fallback: str | None = None) -> ClipEncoder:
    settings = make_settings(cache, model, fallback)
    encoder = ClipEncoder(settings.clip, settings)
    encoder.load()
    return encoder


def noise_image(seed: int, height: int = 48, width: int = 64) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def encoder(cache: Path) -> ClipEncoder:
    return load_encoder(cache, "random:tiny")


def test_registered_under_its_task_name() -> None:
    assert encoder_class("clip") is ClipEncoder


def test_loads_the_tiny_preset(encoder: ClipEncoder, cache: Path) -> None:
    assert encoder.model_name == "random:tiny"
    assert encoder.dim == 32
    assert encoder.max_text_length == 32
    folder = cache / "random-clip-tiny"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"):
        assert (folder / name).is_file()
    assert not [p for p in cache.iterdir() if p.name.startswith(".")], "temp build dir left over"
    # CLIP pools text at eos_token_id; id 2 would switch it to the legacy argmax rule.
    eos = encoder.bundle.tokenizer.eos_token_id
    assert encoder.bundle.model.config.text_config.eos_token_id == eos != 2


def test_image_vectors_are_unit_float32_rows(encoder: ClipEncoder) -> None:
    vectors = encoder.encode_images([encoder.preprocess(noise_image(i)) for i in range(3)])
    assert vectors.shape == (3, encoder.dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_same_image_same_vector_different_images_differ(encoder: ClipEncoder) -> None:
    first = encoder.encode_images([encoder.preprocess(noise_image(1))])
    again = encoder.encode_images([encoder.preprocess(noise_image(1))])
    other = encoder.encode_images([encoder.preprocess(noise_image(2))])
    np.testing.assert_array_equal(first, again)
    assert float(first[0] @ other[0]) < 0.9999


def test_batch_equals_one_by_one(encoder: ClipEncoder) -> None:
    tensors = [encoder.preprocess(noise_image(i, 40 + 7 * i, 90 - 5 * i)) for i in range(5)]
    batch = encoder.encode_images(tensors)
    singles = np.concatenate([encoder.encode_images([t]) for t in tensors])
    assert batch.shape == (5, encoder.dim)
    np.testing.assert_allclose(batch, singles, atol=1e-5)


def test_forward_returns_the_projected_features(encoder: ClipEncoder) -> None:
    batch = torch.stack([encoder.preprocess(noise_image(i)) for i in range(2)])
    with torch.inference_mode():
        out = encoder.forward(batch)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, encoder.dim)


def test_text_vectors(encoder: ClipEncoder) -> None:
    vectors = encoder.encode_texts(["a photo of a cat", "a red car", "a photo of a cat"])
    assert vectors.shape == (3, encoder.dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)
    assert float(vectors[0] @ vectors[1]) < 0.9999


def test_text_pooling_ignores_padding(encoder: ClipEncoder) -> None:
    # Pooling must read the eos token, not a pad position: a short text padded in a
    # batch with a long one embeds as it does alone.
    alone = encoder.encode_texts(["a cat"])
    padded = encoder.encode_texts(["a cat", "a dog running across the green grass in the park"])
    np.testing.assert_allclose(padded[0], alone[0], atol=1e-5)


def test_truncation_is_reported(encoder: ClipEncoder) -> None:
    tokenizer = encoder.bundle.tokenizer
    assert len(tokenizer("cat")["input_ids"]) == 3, "'cat' should be one token plus bos/eos"
    fits = " ".join(["cat"] * (encoder.max_text_length - 2))
    cut = " ".join(["cat"] * (encoder.max_text_length + 10))
    vectors, truncated = encoder.encode_texts_with_truncation([fits, cut, "cat"])
    assert truncated == [False, True, False]
    # Truncation keeps the eos token, so the cut text embeds like the part that fit.
    np.testing.assert_allclose(vectors[1], vectors[0], atol=1e-5)


def test_building_twice_gives_identical_weights(encoder: ClipEncoder, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    torch.manual_seed(12345)  # whatever the caller's RNG holds must not matter
    state = torch.random.get_rng_state()
    other = presets.random_model_dir("clip", "tiny", tmp_path)
    assert torch.equal(torch.random.get_rng_state(), state), "the build moved the global RNG"
    original = Path(encoder.settings.model_cache_dir) / "random-clip-tiny"
    first = load_file(str(original / "model.safetensors"))
    second = load_file(str(other / "model.safetensors"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (other / "tokenizer.json").read_bytes() == (original / "tokenizer.json").read_bytes()


def test_a_lost_build_race_keeps_the_winner(tmp_path: Path) -> None:
    final = tmp_path / "random-test-race-p"

    def build(folder: Path) -> None:
        (folder / "mine").write_text("loser")
        final.mkdir()  # another process finishes first, while this build runs
        (final / "mine").write_text("winner")

    assert presets.build_once(build, final) == final
    assert (final / "mine").read_text() == "winner"
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("/nonexistent/imagestream/model", "no such folder"),
        ("random:nope", "unknown random preset 'nope' (known: tiny, vit-b-32, vit-l-14)"),
    ],
)
def test_bad_spec_is_one_clear_line(tmp_path: Path, spec: str, reason: str) -> None:
    with pytest.raises(ModelLoadError) as caught:
        load_encoder(tmp_path, spec)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"cannot load CLIP model {spec!r}: {reason}")
    assert "IMAGESTREAM_CLIP__MODEL" in message
    assert "random:<tiny|vit-b-32|vit-l-14>" in message


def test_uncached_hub_id_fails_fast_when_the_hub_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    # A closed local port: refused at once, and never a real download.
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match=r"hub \(http://127\.0\.0\.1:9\) is unreachable"):
        load_encoder(tmp_path, "imagestream-tests/no-such-model")
    assert time.monotonic() - started < 10


def test_uncached_hub_id_in_offline_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set") as caught:
        load_encoder(tmp_path, "imagestream-tests/no-such-model")
    assert "'imagestream-tests/no-such-model'" in str(caught.value)


def test_fallback_loads_with_one_warning(cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = "/nonexistent/imagestream/model"
    with caplog.at_level(logging.WARNING, logger="imagestream.models"):
        encoder = load_encoder(cache, missing, fallback="random:tiny")
    assert encoder.model_name == "random:tiny"
    assert encoder.dim == 32
    records = [r for r in caplog.records if r.name == "imagestream.models"]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "\n" not in message
    assert repr(missing) in message
    assert "using fallback 'random:tiny'" in message


def test_failing_fallback_names_the_fallback(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot load CLIP model 'random:nope'"):
        load_encoder(tmp_path, "/nonexistent/imagestream/model", fallback="random:nope")


def test_encoding_before_load_is_an_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "random:tiny")
    with pytest.raises(RuntimeError, match=r"load\(\) has not been called"):
        ClipEncoder(settings.clip, settings).encode_texts(["a cat"])


@pytest.mark.parametrize(
    ("mode", "height", "width"),
    [("RGB", 48, 65), ("RGB", 300, 120), ("RGB", 32, 32), ("RGB", 10, 20), ("L", 70, 50)],
)
def test_preprocess_matches_the_hf_processor(
    encoder: ClipEncoder, mode: str, height: int, width: int
) -> None:
    image = noise_image(height * width, height, width).convert(mode)
    ours = encoder.preprocess(image)
    theirs = encoder.bundle.processor(images=image.convert("RGB"), return_tensors="pt")
    expected = theirs["pixel_values"][0]
    assert ours.dtype == torch.float32
    assert ours.shape == expected.shape == (3, 32, 32)
    # Measured ~5e-7: the same PIL resize, only float rounding differs.
    assert float((ours - expected).abs().max()) < 1e-4


def test_preprocess_fixed_size_without_crop_matches_hf() -> None:
    from transformers import CLIPImageProcessorPil

    # SigLIP-style: resize straight to a square, no crop, mean/std 0.5, bilinear.
    processor = CLIPImageProcessorPil(
        size={"height": 40, "width": 40},
        do_center_crop=False,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        resample=Image.Resampling.BILINEAR,
    )
    spec = PixelSpec.from_processor(processor)
    assert spec is not None
    image = noise_image(7, 90, 50)
    expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
    ours = spec(image)
    assert ours.shape == expected.shape == (3, 40, 40)
    assert float((ours - expected).abs().max()) < 1e-4


def test_unsupported_processor_config_is_left_to_hf() -> None:
    from transformers import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 64})
    assert PixelSpec.from_processor(processor) is None
