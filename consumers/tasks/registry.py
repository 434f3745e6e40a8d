"""The image tasks by name: one table, written out here."""

from __future__ import annotations

from typing import Any

from consumers.tasks.base import ImageTask
from consumers.tasks.caption import CaptionTask
from consumers.tasks.clip_heads import ClassifyTask
from consumers.tasks.embedding import ClipTask, Dinov2Task
from consumers.tasks.face import FaceTask
from consumers.tasks.labels import LabelsTask
from consumers.tasks.ocr import OcrTask

TASKS: dict[str, type[ImageTask[Any, Any]]] = {
    "caption": CaptionTask,
    "classify": ClassifyTask,
    "clip": ClipTask,
    "dinov2": Dinov2Task,
    "face": FaceTask,
    "labels": LabelsTask,
    "ocr": OcrTask,
}


def task_class(name: str) -> type[ImageTask[Any, Any]]:
    try:
        return TASKS[name]
    except KeyError:
        known = ", ".join(sorted(TASKS))
        raise KeyError(f"no task named {name!r} (known: {known})") from None
