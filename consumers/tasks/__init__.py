"""Image tasks, one module each; ``registry.py`` names them."""

from consumers.tasks.base import ImageTask, Job
from consumers.tasks.registry import task_class

__all__ = ["ImageTask", "Job", "task_class"]
