"""Face detection and alignment on the CPU, with DeepFace's detectors.

DeepFace's detectors keep per-call state (OpenCV's cascade classifiers are not
thread-safe), so each decode thread borrows its own instance from a pool. Detection
runs on the image itself; only the faces found are cut, with a margin, from a padded
copy for alignment (DeepFace pads the whole image and detects on that, four times the
pixels for the same boxes). With ``opencv`` the profile-face cascade can run too, on the
image and its mirror: the frontal cascade misses heads turned to the side.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from consumers.models.face.deepface_env import find_weights

Pixels = NDArray[np.uint8]
Box = tuple[int, int, int, int]  # x, y, width, height
PROFILE_CASCADE = "haarcascade_profileface.xml"
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
OVERLAP = 0.3  # a profile box overlapping a kept box by this IoU is the same face
# DeepFace finds missing eyes with its shared OpenCV detector, whatever the main one.
_EYES_LOCK = threading.Lock()


@dataclass(frozen=True)
class Detected:
    """One face: its box in the detected image, DeepFace's confidence, the aligned crop."""

    box: Box
    confidence: float
    crop: Pixels  # BGR


class Detector:
    """One thread's detector: DeepFace's, plus the profile cascade when asked."""

    def __init__(self, name: str, profiles: bool) -> None:
        from deepface.modules import modeling

        self.name = name
        self.base: Any = (
            None if name == "skip" else modeling.get_model_class("face_detector", name)()
        )
        self.profile: Any = None
        if profiles and name == "opencv":
            self.profile = cv2.CascadeClassifier(_cascade_path(PROFILE_CASCADE))

    def regions(self, bgr: Pixels) -> list[Any]:
        from deepface.models.Detector import FacialAreaRegion

        if self.base is None:
            return [FacialAreaRegion(x=0, y=0, w=bgr.shape[1], h=bgr.shape[0], confidence=0)]
        found: list[Any] = list(self.base.detect_faces(bgr))
        if self.profile is not None:
            found += self._profiles(bgr, [_box(r) for r in found])
        return found

    def _profiles(self, bgr: Pixels, kept: list[Box]) -> list[Any]:
        from deepface.models.Detector import FacialAreaRegion

        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        width = gray.shape[1]
        added = []
        for mirrored in (False, True):
            image = np.ascontiguousarray(gray[:, ::-1]) if mirrored else gray
            # The same parameters and score mapping as DeepFace's frontal cascade.
            boxes, _, scores = self.profile.detectMultiScale3(
                image, 1.1, 10, outputRejectLevels=True
            )
            for (x, y, w, h), score in zip(boxes, scores, strict=False):
                box: Box = (int(width - x - w) if mirrored else int(x), int(y), int(w), int(h))
                if any(_iou(box, other) > OVERLAP for other in kept):
                    continue
                kept.append(box)
                crop = bgr[box[1] : box[1] + box[3], box[0] : box[0] + box[2]]
                left, right = self.base.find_eyes(crop)
                added.append(
                    FacialAreaRegion(
                        *box,
                        left_eye=_shift(left, box[0], box[1]),
                        right_eye=_shift(right, box[0], box[1]),
                        confidence=(100 - float(score)) / 100,
                    )
                )
        return added


def _cascade_path(file_name: str) -> str:
    """OpenCV's bundled cascade where the wheel has it (opencv 4), else DeepFace's folder."""
    bundled = Path(getattr(getattr(cv2, "data", None), "haarcascades", "") or "/nonexistent")
    path = bundled / file_name
    return str(path) if path.is_file() else find_weights(file_name, "")


class DetectorPool:
    """Detectors built up front (so missing weights fail at start), lent one per thread."""

    def __init__(self, build: Callable[[], Detector], size: int) -> None:
        self._free: queue.SimpleQueue[Detector] = queue.SimpleQueue()
        for _ in range(size):
            self._free.put(build())

    @contextmanager
    def borrow(self) -> Iterator[Detector]:
        detector = self._free.get()
        try:
            yield detector
        finally:
            self._free.put(detector)


def detect_faces(detector: Detector, bgr: Pixels, align: bool, max_faces: int) -> list[Detected]:
    """The largest ``max_faces`` faces of one BGR image, aligned by their eyes if asked."""
    from deepface.modules import detection

    regions = sorted(detector.regions(bgr), key=lambda r: (-r.w * r.h, r.y, r.x))[:max_faces]
    height, width = bgr.shape[:2]
    dy, dx = (height // 2, width // 2) if align else (0, 0)
    padded = cv2.copyMakeBorder(bgr, dy, dy, dx, dx, cv2.BORDER_CONSTANT, value=[0, 0, 0])
    # Naming opencv stops DeepFace from looking for eyes again: opencv found them already,
    # and the whole image of "skip" has none worth finding.
    backend = "opencv" if detector.name in ("opencv", "skip") else detector.name
    faces = []
    for region in regions:
        moved = replace(
            region,
            x=int(region.x) + dx,
            y=int(region.y) + dy,
            **{k: _shift(getattr(region, k), dx, dy) for k in LANDMARKS},
        )
        with _eyes_lock(backend):
            face = detection.extract_face(moved, padded, align, 0, dx, dy, backend)
        if face.img.size == 0:
            continue
        faces.append(Detected(_box(face.facial_area), float(face.confidence or 0.0), face.img))
    return faces


@contextmanager
def _eyes_lock(backend: str) -> Iterator[None]:
    if backend == "opencv":
        yield
        return
    with _EYES_LOCK:
        yield


def _box(region: Any) -> Box:
    return int(region.x), int(region.y), int(region.w), int(region.h)


def _shift(point: Any, dx: int, dy: int) -> tuple[int, int] | None:
    return None if point is None else (int(point[0]) + dx, int(point[1]) + dy)


def _iou(a: Box, b: Box) -> float:
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(0, width) * max(0, height)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union else 0.0
