"""Helpers for the face tests: versions of real photos of two people, a DeepFace home
with random weights (for tests about an architecture), a two-face photo."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumers.models.face.deepface_env import WEIGHTS_SUBDIR
from consumers.models.presets import random_model_dir
from loadtest.face_bench import two_face_photo
from loadtest.face_versions import photo_versions

__all__ = ["face_model_cache", "photo_versions", "random_deepface_home", "two_face_photo"]


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
