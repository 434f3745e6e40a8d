"""Random weights of DeepFace's PyTorch recognition models, written where DeepFace loads them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch

from consumers.models.face.deepface_env import (
    WEIGHTS_SUBDIR,
    recognition_class,
    use_deepface,
    weights_from,
)


def random_home(model_name: str) -> Callable[[Path], None]:
    """A builder for a DEEPFACE_HOME holding random weights of ``model_name``."""

    def build(folder: Path) -> None:
        write_random_weights(model_name, folder / WEIGHTS_SUBDIR)

    return build


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
