"""The ``sim:`` stand-in accelerator (consumers/models/sim.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from consumers.config.settings import ClipSettings, Dinov2Settings, Settings
from consumers.models.clip import ClipEncoder
from consumers.models.registry import make_encoder
from consumers.models.sim import SimEncoder
from consumers.pipeline.item_errors import ModelLoadError


def _settings(model: str) -> Settings:
    return Settings(
        _env_file=None, clip=ClipSettings(model=model), dinov2=Dinov2Settings(model=model)
    )


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))


def test_sim_spec_picks_the_sim_encoder_for_embedding_tasks_only() -> None:
    settings = _settings("sim:40ms/32")
    assert isinstance(make_encoder("clip", settings), SimEncoder)
    assert isinstance(make_encoder("dinov2", settings), SimEncoder)
    assert isinstance(make_encoder("clip", _settings("random:tiny")), ClipEncoder)


def test_forward_waits_the_device_time_without_cpu() -> None:
    encoder = make_encoder("clip", _settings("sim:100ms/4:64"))
    encoder.load()
    assert encoder.dim == 64
    assert encoder.cpu_workers() is None  # one call per batch, as on a GPU
    tensors = [encoder.preprocess(_image(i)) for i in range(8)]
    assert tensors[0].shape == (3, 224, 224)
    wall, cpu = time.perf_counter(), time.thread_time()
    vectors = encoder.encode_images(tensors)
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    assert wall >= 0.2  # 100 ms per 4 images, 8 images
    assert cpu < wall / 2
    assert vectors.shape == (8, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_vectors_are_deterministic_per_image_and_text() -> None:
    encoder = make_encoder("clip", _settings("sim:1ms/32"))
    encoder.load()
    a, b = encoder.preprocess(_image(1)), encoder.preprocess(_image(2))
    first, again = encoder.encode_images([a, b]), encoder.encode_images([a, b])
    assert np.array_equal(first, again)
    assert abs(float(first[0] @ first[1])) < 0.5
    assert isinstance(encoder, SimEncoder)
    texts, cut = encoder.encode_texts_with_truncation(["a cat", "a cat", "\ud800"])
    assert cut == [False] * 3
    assert np.array_equal(texts[0], texts[1])
    assert texts.shape == (3, 512)


@pytest.mark.parametrize("spec", ["sim:fast", "sim:40ms", "sim:40/32"])
def test_bad_sim_spec_is_one_clear_error(spec: str) -> None:
    with pytest.raises(ModelLoadError, match="expected sim:<ms>ms/<batch>"):
        make_encoder("clip", _settings(spec)).load()
