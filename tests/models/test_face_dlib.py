"""dlib's real face descriptor (face-recognition-models via dlib-bin) through FaceEncoder.

What only real weights can do (versions of one person's photo above the same-person
threshold, two people below it) is checked through the whole stack in test_people.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from consumers.config.settings import FaceSettings, PeopleSettings, Settings
from consumers.models.face.dlib_weights import RECOGNITION_FILE, packaged_weights_dir
from consumers.models.face.recognition import FaceEncoder
from consumers.people.assign import same_person_threshold


@pytest.fixture(scope="module")
def encoder() -> FaceEncoder:
    face = FaceEncoder(FaceSettings(model="Dlib", device="cpu"), Settings())
    face.load()
    return face


def test_the_packaged_weights_are_found_without_importing_the_package() -> None:
    folder = packaged_weights_dir()
    assert folder is not None
    assert (folder / RECOGNITION_FILE).stat().st_size > 20_000_000  # the trained ResNet


def test_dlib_is_the_real_model(encoder: FaceEncoder) -> None:
    assert (encoder.model_name, encoder.dim) == ("Dlib", 128)
    assert same_person_threshold("Dlib", PeopleSettings()) == pytest.approx(0.93)


def test_the_configured_model_falls_back_to_dlib_when_its_weights_are_missing(
    tmp_path: Path,
) -> None:
    face = FaceSettings(
        model="GhostFaceNet", fallback_model="Dlib", deepface_home=tmp_path, device="cpu"
    )
    encoder = FaceEncoder(face, Settings())
    encoder.load()
    assert (encoder.model_name, encoder.dim) == ("Dlib", 128)
