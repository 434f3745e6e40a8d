"""Helpers for the face tests: versions of real photos of two people, a DeepFace home
with random weights (for tests about an architecture), a two-face photo."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from consumers.encoders.deepface_env import WEIGHTS_SUBDIR
from consumers.encoders.weights import random_model_dir
from loadtest.face_bench import two_face_photo

__all__ = ["face_model_cache", "photo_versions", "random_deepface_home", "two_face_photo"]

# Two people: skimage's astronaut (Eileen Collins) and cameraman. Each version is one
# edit a photo library meets: a mirrored copy, a crop, a thumbnail, exposure, a
# recompressed JPEG, a slightly rotated scan (``darker`` is left for a later photo).
PEOPLE = {"astronaut": (100, 0, 400, 300), "camera": (150, 30, 400, 280)}
VERSIONS = ("original", "mirror", "crop", "half", "brighter", "jpeg40", "rotated5")


def face_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for every face test module of a session: the random weights are
    built once (calibrating them takes seconds on a busy CPU)."""
    folder = tmp_path_factory.getbasetemp() / "face-models"
    folder.mkdir(exist_ok=True)
    return folder


def random_deepface_home(model_cache: Path) -> Path:
    """A DEEPFACE_HOME whose weights folder holds random GhostFaceNet weights.

    It is the folder ``random:GhostFaceNet`` builds in the model cache: DeepFace's own
    PyTorch GhostFaceNet, saved as the ``ghostfacenet_v1.pth`` it loads, so pointing
    ``deepface_home`` at it runs the production loading path. The Haar cascades come
    from OpenCV's wheel.
    """
    home = random_model_dir("deepface", "GhostFaceNet", model_cache)
    assert (home / WEIGHTS_SUBDIR / "ghostfacenet_v1.pth").is_file()
    return home


def photo_versions(person: str, names: tuple[str, ...] = VERSIONS) -> dict[str, np.ndarray]:
    """RGB versions of one person's photo (``PEOPLE``), by name (``VERSIONS``)."""
    import skimage.data

    photo = Image.fromarray(getattr(skimage.data, person)()).convert("RGB")
    edits = {
        "original": lambda: photo,
        "mirror": lambda: photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "crop": lambda: photo.crop(PEOPLE[person]),
        "half": lambda: photo.resize(
            (photo.width // 2, photo.height // 2), Image.Resampling.LANCZOS
        ),
        "brighter": lambda: ImageEnhance.Brightness(photo).enhance(1.2),
        "darker": lambda: ImageEnhance.Brightness(photo).enhance(0.75),
        "jpeg40": lambda: _recompressed(photo, 40),
        "rotated5": lambda: photo.rotate(5, Image.Resampling.BICUBIC, fillcolor=(128, 128, 128)),
    }
    return {name: np.asarray(edits[name]()) for name in names}


def _recompressed(photo: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
