"""Image tasks, one module each; importing this package registers them explicitly."""

from consumers.tasks import caption, clip_heads, embedding, face, labels, ocr
from consumers.tasks.base import ImageTask, Job, task_class

__all__ = [
    "ImageTask",
    "Job",
    "caption",
    "clip_heads",
    "embedding",
    "face",
    "labels",
    "ocr",
    "task_class",
]
