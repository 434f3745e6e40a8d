"""DeepFace inside imagestream: PyTorch backend, weights looked up (never downloaded).

DeepFace fetches a missing weight file from the internet the first time a model or
detector is built. Production consumers must not depend on that (and these machines
cannot reach it), so ``use_deepface`` replaces DeepFace's downloader, once per process,
with a lookup in the configured folders (then in the face-recognition-models wheel,
``dlib_weights``): a missing file becomes ``WeightsMissing``,
which names the file and the folder to put it in, at start-up rather than on the first
image. ``random:<model>`` specs (``consumers/models/presets/deepface.py``) write random
weights of a DeepFace PyTorch architecture into a folder of the model cache, so tests
and benchmarks load them through DeepFace's own loading code.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from consumers.models.face.dlib_weights import packaged_weights_dir

WEIGHTS_SUBDIR = Path(".deepface") / "weights"
BACKEND = "pytorch"
# The recognition models DeepFace 0.0.103 implements in PyTorch: the ones random: can build.
TORCH_MODELS = (
    "ArcFace",
    "DeepFace",
    "DeepID",
    "Facenet",
    "Facenet512",
    "GhostFaceNet",
    "OpenFace",
    "VGG-Face",
)

_LOCK = threading.RLock()
_search: tuple[Path, ...] = ()
_create = False


class WeightsMissing(FileNotFoundError):
    """A weight file DeepFace asked for is not in any configured folder."""

    def __init__(self, file_name: str, folder: Path, source: str | list[str]) -> None:
        url = source if isinstance(source, str) else (source[0] if source else "")
        where = f" (DeepFace publishes it at {url})" if url else ""
        super().__init__(f"{file_name} is missing: put it in {folder}{where}")
        self.file_name = file_name
        self.folder = folder


def weights_dir(home: Path | None) -> Path:
    """Where DeepFace keeps weights: ``<home>/.deepface/weights``, home as DeepFace picks it."""
    base = home or Path(os.environ.get("DEEPFACE_HOME") or Path.home())
    return base.expanduser() / WEIGHTS_SUBDIR


def find_weights(file_name: str, source_url: str | list[str], *_: Any, **__: Any) -> str:
    """Stands in for ``weight_utils.download_weights_if_necessary``: look, never fetch."""
    # The configured folders first, then the files a wheel ships (dlib's models).
    for folder in (*_search, *filter(None, [packaged_weights_dir()])):
        if (folder / file_name).is_file():
            return str(folder / file_name)
    if _create and _search:
        return str(_search[0] / file_name)
    raise WeightsMissing(file_name, _search[-1] if _search else weights_dir(None), source_url)


def use_deepface(home: Path | None) -> None:
    """Import DeepFace on the PyTorch backend (never TensorFlow) with downloads replaced."""
    os.environ["DEEPFACE_BACKEND_ENGINE"] = BACKEND
    os.environ.setdefault("DEEPFACE_LOG_LEVEL", str(logging.WARNING))
    if home is not None:
        os.environ["DEEPFACE_HOME"] = str(home.expanduser())
    from deepface.commons import backend_utils, weight_utils

    engine = backend_utils.get_backend_engine()
    if engine != BACKEND:
        # The engine is fixed at DeepFace's first use in the process.
        raise RuntimeError(f"DeepFace already runs on {engine} in this process, not {BACKEND}")
    weight_utils.download_weights_if_necessary = find_weights


@contextmanager
def weights_from(*folders: Path, create: bool = False) -> Iterator[None]:
    """Resolve DeepFace weight files in ``folders`` (first wins) while building models.

    ``create`` hands out paths in the first folder for files that do not exist yet
    (random-weight builds write them). Builds hold a lock: the lookup is process-wide.
    """
    global _search, _create  # DeepFace calls a module-level function: no instance to hold them
    with _LOCK:
        previous = _search, _create
        _search, _create = tuple(folders), create
        try:
            yield
        finally:
            _search, _create = previous


def recognition_class(model_name: str) -> type[Any]:
    from deepface.modules import modeling

    cls: type[Any] = modeling.get_model_class("facial_recognition", model_name)
    return cls
