"""CPU engines (consumers/models/engines.py) on the tiny random-weight models: exported
CLIP image + text towers and DINOv2 match torch fp32 per image, through the Encoder API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from consumers.config.settings import ClipSettings, Dinov2Settings, Settings
from consumers.models.clip import ClipEncoder
from consumers.models.dinov2 import Dinov2Encoder
from consumers.models.encoder import Encoder

TEXTS = ["a cat", "a photo of a red car parked in front of an old house next to a dog", "x"]
CLOSE = 0.999  # fp32 and bf16; int8 is only checked for sanity (its figure: docs/engines.md)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


def _encoder(cache: Path, task: str, engine: str = "torch", precision: str = "fp32") -> Encoder:
    section = {"clip": ClipSettings, "dinov2": Dinov2Settings}[task]
    settings = Settings(
        _env_file=None,
        model_cache_dir=cache,
        **{task: section(model="random:tiny", engine=engine, precision=precision)},
    )
    encoder = {"clip": ClipEncoder, "dinov2": Dinov2Encoder}[task](settings.task(task), settings)
    encoder.load()
    return encoder


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [
        Image.fromarray(rng.integers(0, 255, (50 + 7 * i, 70, 3), dtype=np.uint8)) for i in range(5)
    ]


def _vectors(encoder: Encoder) -> np.ndarray:
    return encoder.encode_images([encoder.preprocess(image) for image in _images()])


@pytest.fixture(scope="module")
def reference(cache: Path) -> dict[str, np.ndarray]:
    clip, dinov2 = _encoder(cache, "clip"), _encoder(cache, "dinov2")
    assert isinstance(clip, ClipEncoder)
    return {"clip": _vectors(clip), "text": clip.encode_texts(TEXTS), "dinov2": _vectors(dinov2)}


def _check(vectors: np.ndarray, expected: np.ndarray, precision: str) -> None:
    assert vectors.shape == expected.shape
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    cosines = (vectors * expected).sum(axis=1)
    assert cosines.min() >= (CLOSE if precision != "int8" else 0.9), cosines
    # Still telling images apart: not one constant vector.
    assert (vectors[0] * vectors[1]).sum() < cosines.min()


@pytest.mark.parametrize(
    ("engine", "precision"),
    [
        ("torch", "bf16"),
        ("onnx", "fp32"),
        ("onnx", "int8"),
        ("openvino", "fp32"),
        ("openvino", "bf16"),
        ("openvino", "int8"),
    ],
)
def test_clip_towers_match_torch_fp32(
    cache: Path, reference: dict[str, np.ndarray], engine: str, precision: str
) -> None:
    encoder = _encoder(cache, "clip", engine, precision)
    assert isinstance(encoder, ClipEncoder)
    assert set(encoder.towers) == (set() if engine == "torch" else {"image", "text"})
    assert encoder.cpu_workers() is None or engine == "torch"
    _check(_vectors(encoder), reference["clip"], precision)
    # Texts of different lengths in one call: the token axis was exported as variable.
    _check(encoder.encode_texts(TEXTS), reference["text"], precision)


@pytest.mark.parametrize(("engine", "precision"), [("onnx", "fp32"), ("openvino", "int8")])
def test_dinov2_matches_torch_fp32(
    cache: Path, reference: dict[str, np.ndarray], engine: str, precision: str
) -> None:
    _check(_vectors(_encoder(cache, "dinov2", engine, precision)), reference["dinov2"], precision)


def test_exports_are_cached_by_model_engine_and_precision(cache: Path) -> None:
    _encoder(cache, "clip", "onnx", "fp32")
    exports = sorted(p.name for p in (cache / "exports").iterdir())
    onnx = [name for name in exports if "-onnx-fp32-" in name and "random-clip-tiny" in name]
    assert {name.split("-")[3] for name in onnx} == {"image", "text"}
    graphs = [cache / "exports" / name / "model.onnx" for name in onnx]
    written = [graph.stat().st_mtime_ns for graph in graphs]
    _encoder(cache, "clip", "onnx", "fp32")  # a second load reuses the export
    assert [graph.stat().st_mtime_ns for graph in graphs] == written
    assert sorted(p.name for p in (cache / "exports").iterdir()) == exports


@pytest.mark.parametrize(("engine", "precision"), [("onnx", "bf16"), ("torch", "int8")])
def test_unsupported_precision_is_a_settings_error(engine: str, precision: str) -> None:
    with pytest.raises(ValidationError, match=f"engine {engine} runs precision"):
        ClipSettings(engine=engine, precision=precision)


def test_label_heads_follow_the_clip_engine() -> None:
    settings = Settings(_env_file=None, clip=ClipSettings(engine="openvino", precision="bf16"))
    assert (settings.labels.engine, settings.labels.precision) == ("openvino", "bf16")
