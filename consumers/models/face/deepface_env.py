"""DeepFace inside imagestream: PyTorch backend, weights looked up (never downloaded).

DeepFace fetches a missing weight file from the internet the first time a model or
detector is built. Production consumers must not depend on that (and these machines
cannot reach it), so ``use_deepface`` replaces DeepFace's downloader, once per process,
with a lookup in the configured folders (then in the face-recognition-models wheel,
``dlib_weights``): a missing file becomes ``WeightsMissing``,
which names the file and the folder to put it in, at start-up rather than on the first
image. ``random:<model>`` specs write random weights of a DeepFace PyTorch architecture
into a folder of the model cache, so tests and benchmarks load them through DeepFace's
own loading code.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from consumers.models.face.dlib_weights import packaged_weights_dir
from consumers.models.weights import register_preset

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


def write_random_weights(model_name: str, folder: Path) -> None:
    """Random weights of a DeepFace PyTorch model, saved under the file name it loads.

    The model's own constructor runs with its ``load_model_weights`` swapped for "keep
    the fresh model and note the file", so the file matches the architecture exactly.
    """
    use_deepface(None)
    cls = recognition_class(model_name)
    module = sys.modules[cls.__module__]
    if not hasattr(module, "load_model_weights"):
        raise LookupError(f"DeepFace model {model_name!r} has no PyTorch implementation")
    files: list[str] = []

    def keep(model: torch.nn.Module, weight_file: str) -> torch.nn.Module:
        files.append(weight_file)
        return model

    folder.mkdir(parents=True, exist_ok=True)
    with weights_from(folder, create=True), mock.patch.object(module, "load_model_weights", keep):
        client = cls()
    _calibrate_batch_norm(client.model, client.input_shape)
    for weight_file in files:
        torch.save(client.model.state_dict(), weight_file)


def _calibrate_batch_norm(model: torch.nn.Module, input_shape: tuple[int, int]) -> None:
    """Batch-norm statistics measured on smooth noise rather than left at 0 and 1.

    Freshly initialised, every input maps to nearly the same direction (cosine 0.9999
    between any two faces), so random-weight searches could not tell an exact duplicate
    from anything else. Measured statistics centre each layer: different faces then
    score far apart, and only identical crops score 1.
    """
    width, height = input_shape
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the calibration batches
    device = next(model.parameters()).device
    model.train()
    with torch.no_grad():
        for _ in range(2):
            coarse = torch.rand(16, 3, max(1, height // 8), max(1, width // 8), device=device)
            model(torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear"))
    model.eval()


def _random_home(model_name: str) -> Any:
    def build(folder: Path) -> None:
        write_random_weights(model_name, folder / WEIGHTS_SUBDIR)

    return build


for _name in TORCH_MODELS:
    register_preset("deepface", _name)(_random_home(_name))
