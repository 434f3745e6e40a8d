"""dlib's trained face models from the ``face-recognition-models`` wheel, for DeepFace.

``face-recognition-models`` 0.3.0 (PyPI) ships ``dlib_face_recognition_resnet_model_v1.dat``
(the 128-d descriptor DeepFace calls ``Dlib``) and ``shape_predictor_5_face_landmarks.dat``
(what DeepFace's ``dlib`` detector loads). Its ``__init__`` imports ``pkg_resources``,
which current setuptools no longer ships, so the folder is found from the import spec
without importing the package. DeepFace reads weights from ``<home>/.deepface/weights``;
``deepface_env.find_weights`` looks in this folder after the configured ones, so an
operator's own file still wins and nothing is copied.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

PACKAGE = "face_recognition_models"
INSTALL = "pip install face-recognition-models==0.3.0 dlib-bin (make install does)"
RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_MODEL = "Dlib"


def packaged_weights_dir() -> Path | None:
    """The wheel's ``models`` folder when it holds dlib's recognition model, else None."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "models"
    return folder if (folder / RECOGNITION_FILE).is_file() else None


def dlib_descriptors(model: Any, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """128-d descriptors of a (faces, height, width, 3) BGR batch in [0, 1], one dlib call.

    DeepFace's ``DlibClient.forward`` hands dlib one 4-d array, which dlib 20's binding
    refuses (it takes one image or a list of images); dlib wants contiguous RGB uint8.
    """
    rgb = np.clip(np.rint(batch[..., ::-1] * 255), 0, 255).astype(np.uint8)
    images = [np.ascontiguousarray(face) for face in rgb]
    rows = model.compute_face_descriptor(images)
    return np.asarray([np.asarray(row) for row in rows], dtype=np.float32).reshape(len(images), -1)
