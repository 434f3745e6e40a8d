"""Faces with DeepFace: every face of an image, then one batched recognition call.

``detect`` (CPU, any thread) finds, aligns and crops every face of one image and turns
each crop into the recognition model's input exactly as ``DeepFace.represent`` does
(resize with padding, then the configured normalization). ``encode_faces`` (the device
thread) runs the model once over the faces of a whole micro-batch: ``represent`` would
detect and recognise per call, on one thread. Weights come from DeepFace's folder
(``<deepface_home>/.deepface/weights``) and are never downloaded; see deepface_env.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from consumers.config.settings import FaceSettings, Settings, TaskSettings
from consumers.models.encoder import Encoder, Vectors
from consumers.models.face.deepface_env import (
    WEIGHTS_SUBDIR,
    recognition_class,
    use_deepface,
    weights_dir,
    weights_from,
)
from consumers.models.face.detect import Box, Detected, Detector, DetectorPool, detect_faces
from consumers.models.face.dlib_weights import DLIB_MODEL, dlib_descriptors
from consumers.models.presets import presets, random_model_dir
from consumers.models.weights import RANDOM_PREFIX, _one_line, with_fallback
from consumers.pipeline.decode import SOURCE_SIZE
from consumers.pipeline.item_errors import ModelLoadError

log = logging.getLogger("imagestream.face")
INSTALL = "pip install --no-deps deepface==0.0.103 (make install does)"


@dataclass(frozen=True)
class FaceCrop:
    """One detected face: box in source-image pixels, confidence in [0, 1], model input."""

    bbox: Box
    confidence: float
    pixels: torch.Tensor  # (3, height, width) float32, BGR as DeepFace's models expect


class FaceEncoder(Encoder):
    name = "face"

    def __init__(self, task: TaskSettings, settings: Settings) -> None:
        super().__init__(task, settings)
        if not isinstance(task, FaceSettings):
            raise TypeError("the face encoder needs FaceSettings")
        self.face = task
        self._client: Any = None
        self._detectors: DetectorPool | None = None

    def load(self) -> None:
        spec, client = with_fallback(self.face, "DeepFace", self._load_spec)
        self._client = client
        self.model_name = spec
        self.dim = int(client.output_shape)
        if isinstance(client.model, torch.nn.Module):
            client.model.to(self.device, self.dtype).eval()
            client.device = self.device
        log.info("face: %s with detector %s", spec, self.face.detector)

    def _load_spec(self, spec: str) -> Any:
        """The recognition model and the detectors for ``spec``, or one ModelLoadError line."""
        home = self.face.deepface_home
        folders = [weights_dir(home)]
        try:
            use_deepface(home)
            model_name = spec.removeprefix(RANDOM_PREFIX)
            if spec.startswith(RANDOM_PREFIX):
                cache = Path(self.settings.model_cache_dir)
                folders.insert(0, random_model_dir("deepface", model_name, cache) / WEIGHTS_SUBDIR)
            with weights_from(*folders):
                client = recognition_class(model_name)()
                self._detectors = DetectorPool(self._new_detector, self.settings.decode.threads)
        except ImportError as err:
            if (err.name or "").partition(".")[0] != "deepface":
                raise ModelLoadError(
                    f"DeepFace {spec!r} with detector {self.face.detector!r} needs the "
                    f"package {err.name!r}, which is not installed"
                ) from err
            raise ModelLoadError(f"DeepFace is not installed ({err}): {INSTALL}") from err
        except Exception as err:
            choices = "|".join(presets("deepface"))
            raise ModelLoadError(
                f"cannot load DeepFace model {spec!r} with detector {self.face.detector!r}: "
                f"{_one_line(err)}; set IMAGESTREAM_FACE__DEEPFACE_HOME to the folder holding "
                f".deepface/weights, or IMAGESTREAM_FACE__MODEL=random:<{choices}>"
            ) from err
        return client

    def _new_detector(self) -> Detector:
        return Detector(self.face.detector, self.face.profile_faces)

    @property
    def client(self) -> Any:
        if self._client is None or self._detectors is None:
            raise RuntimeError("FaceEncoder.load() has not been called")
        return self._client

    def detect(self, image: Image.Image) -> list[FaceCrop]:
        """Every face of one RGB image (largest first), ready for ``encode_faces``."""
        client = self.client
        assert self._detectors is not None  # loaded with the client
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        with self._detectors.borrow() as detector:
            found = detect_faces(detector, bgr, self.face.align, self.face.max_faces)
        scale = _scale(image)
        size = image.info.get(SOURCE_SIZE, image.size)
        crops = []
        for face in found:
            confidence = round(min(max(face.confidence, 0.0), 1.0), 4)
            if confidence < self.face.min_confidence:
                continue
            pixels = self._model_input(face, client.input_shape)
            crops.append(FaceCrop(_to_source(face.box, scale, size), confidence, pixels))
        return crops

    def _model_input(self, face: Detected, input_shape: tuple[int, int]) -> torch.Tensor:
        from deepface.modules import preprocessing

        width, height = input_shape  # DeepFace's input_shape is (width, height)
        pixels = preprocessing.resize_image(face.crop.astype(np.float32) / 255, (height, width))
        pixels = preprocessing.normalize_input(pixels, self.face.normalization)
        return torch.from_numpy(np.ascontiguousarray(pixels[0].transpose(2, 0, 1)))

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """All faces of ``image`` as one (faces, 3, height, width) tensor."""
        crops = self.detect(image)
        if crops:
            return torch.stack([c.pixels for c in crops])
        width, height = self.client.input_shape
        return torch.empty((0, 3, height, width))

    @property
    def parallel_forward(self) -> bool:
        # DeepFace's other backends (OpenCV's SFace, Dlib) are one native object with
        # per-call state: one thread at a time.
        return isinstance(self.client.model, torch.nn.Module)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        client = self.client
        if isinstance(client.model, torch.nn.Module):
            pixels = batch.to(self.device, self.dtype, non_blocking=True)
            with torch.inference_mode():
                output: torch.Tensor = client.model(pixels)
            return output
        nhwc = batch.permute(0, 2, 3, 1).numpy()
        if client.model_name == DLIB_MODEL:
            return torch.from_numpy(dlib_descriptors(client.model.model, nhwc))
        # DeepFace's other non-PyTorch models (SFace, ...) take NHWC numpy batches.
        rows = np.asarray(client.forward(nhwc), dtype=np.float32)
        return torch.from_numpy(rows.reshape(batch.shape[0], -1))

    def encode_faces(self, crops: list[torch.Tensor]) -> Vectors:
        """One batched call over face crops from any number of images; blocking."""
        if not crops:
            return np.empty((0, self.dim), dtype=np.float32)
        return self.encode_images(crops)


def _scale(image: Image.Image) -> float:
    """Source pixels per decoded pixel (decoding may have downscaled the image)."""
    source = image.info.get(SOURCE_SIZE)
    return max(source) / max(image.size) if source else 1.0


def _to_source(box: Box, scale: float, size: tuple[int, int]) -> Box:
    """A box in source-image pixels, clipped to the image."""
    x, y = max(0, round(box[0] * scale)), max(0, round(box[1] * scale))
    width = max(0, min(round(box[2] * scale), size[0] - x))
    height = max(0, min(round(box[3] * scale), size[1] - y))
    return x, y, width, height
