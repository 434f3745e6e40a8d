"""dlib's real face descriptor (face-recognition-models via dlib-bin) through FaceEncoder.

Only real weights can pass these: versions of one person's photo stay above the
same-person threshold, two different people stay below it.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from consumers.encoders.dlib_weights import RECOGNITION_FILE, packaged_weights_dir
from consumers.encoders.face import FaceEncoder
from consumers.people.assign import same_person_threshold
from consumers.settings import FaceSettings, PeopleSettings, Settings
from tests.face_support import photo_versions


@pytest.fixture(scope="module")
def encoder() -> FaceEncoder:
    face = FaceEncoder(FaceSettings(model="Dlib", device="cpu"), Settings())
    face.load()
    return face


@pytest.fixture(scope="module")
def vectors(encoder: FaceEncoder) -> dict[tuple[str, str], np.ndarray]:
    """The one face of every version of both people's photos."""
    found = {}
    for person in ("astronaut", "camera"):
        for version, pixels in photo_versions(person).items():
            crops = encoder.detect(Image.fromarray(pixels))
            assert len(crops) == 1, f"{person}/{version}: {len(crops)} faces"
            found[(person, version)] = encoder.encode_faces([crops[0].pixels])[0]
    return found


def test_the_packaged_weights_are_found_without_importing_the_package() -> None:
    folder = packaged_weights_dir()
    assert folder is not None
    assert (folder / RECOGNITION_FILE).stat().st_size > 20_000_000  # the trained ResNet


def test_dlib_is_the_real_model(encoder: FaceEncoder) -> None:
    assert (encoder.model_name, encoder.dim) == ("Dlib", 128)
    assert same_person_threshold("Dlib", PeopleSettings()) == pytest.approx(0.93)


def test_versions_of_one_person_match_and_two_people_do_not(
    vectors: dict[tuple[str, str], np.ndarray],
) -> None:
    threshold = same_person_threshold("Dlib", PeopleSettings())
    same, different = [], []
    for (a, va), (b, vb) in itertools.combinations(vectors.items(), 2):
        score = float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))
        (same if a[0] == b[0] else different).append((score, a, b))
    assert min(same)[0] >= threshold, min(same)
    assert max(different)[0] < threshold, max(different)


def test_the_configured_model_falls_back_to_dlib_when_its_weights_are_missing(
    tmp_path: Path,
) -> None:
    face = FaceSettings(
        model="GhostFaceNet", fallback_model="Dlib", deepface_home=tmp_path, device="cpu"
    )
    encoder = FaceEncoder(face, Settings())
    encoder.load()
    assert (encoder.model_name, encoder.dim) == ("Dlib", 128)
