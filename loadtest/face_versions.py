"""How far apart a face model puts versions of one person's photo and two people.

    python -m loadtest.face_versions [--model Dlib]

Versions are the edits a photo library meets (``VERSIONS``) of scikit-image's astronaut
and cameraman photos. Prints the lowest cosine similarity between two versions of one
person, the highest between the two people, the model's same-person threshold (what
``face.people`` groups by) and the seconds per image of detection plus recognition.
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
from collections.abc import Sequence
from time import perf_counter

import numpy as np
from PIL import Image, ImageEnhance

from consumers.config.settings import FaceSettings, PeopleSettings, Settings
from consumers.models.face.recognition import FaceEncoder
from consumers.people.assign import same_person_threshold

# A crop around each person's face, in their photo's pixels.
CROPS = {"astronaut": (100, 0, 400, 300), "camera": (150, 30, 400, 280)}
VERSIONS = ("original", "mirror", "crop", "half", "brighter", "jpeg40", "rotated5")


def photo_versions(person: str, names: Sequence[str] = VERSIONS) -> dict[str, np.ndarray]:
    """RGB versions of one person's photo (``CROPS``' keys), by name; also ``darker``."""
    import skimage.data

    photo = Image.fromarray(getattr(skimage.data, person)()).convert("RGB")
    edits = {
        "original": lambda: photo,
        "mirror": lambda: photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "crop": lambda: photo.crop(CROPS[person]),
        "half": lambda: photo.reduce(2),
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.face_versions", description=__doc__)
    parser.add_argument("--model", default="Dlib")
    args = parser.parse_args(argv)
    encoder = FaceEncoder(FaceSettings(model=args.model, device="cpu"), Settings())
    encoder.load()
    vectors: dict[tuple[str, str], np.ndarray] = {}
    started = perf_counter()
    for person in CROPS:
        for version, pixels in photo_versions(person).items():
            crops = encoder.detect(Image.fromarray(pixels))
            if len(crops) != 1:
                print(f"{person}/{version}: {len(crops)} faces found, skipped")
                continue
            vector = encoder.encode_faces([crops[0].pixels])[0]
            vectors[(person, version)] = vector / np.linalg.norm(vector)
    seconds = (perf_counter() - started) / (len(CROPS) * len(VERSIONS))
    same: list[tuple[float, tuple[str, str], tuple[str, str]]] = []
    different: list[tuple[float, tuple[str, str], tuple[str, str]]] = []
    for (a, u), (b, v) in itertools.combinations(vectors.items(), 2):
        (same if a[0] == b[0] else different).append((float(u @ v), a, b))
    threshold = same_person_threshold(encoder.model_name, PeopleSettings())
    print(f"model {encoder.model_name}: {len(vectors)} faces, {seconds:.2f} s per image")
    print(f"lowest similarity, one person:  {min(same)[0]:.3f} {min(same)[1:]}")
    print(f"highest similarity, two people: {max(different)[0]:.3f} {max(different)[1:]}")
    print(f"same-person threshold:          {threshold:.3f}")
    return 0 if max(different)[0] < threshold <= min(same)[0] else 1


if __name__ == "__main__":
    sys.exit(main())
