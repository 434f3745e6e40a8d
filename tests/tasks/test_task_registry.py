"""consumers/tasks/registry.py: the image tasks by name, each under its own name."""

from __future__ import annotations

import pytest

from consumers.tasks.registry import TASKS, task_class


def test_each_task_is_listed_under_its_own_name() -> None:
    assert sorted(TASKS) == ["caption", "classify", "clip", "dinov2", "face", "labels", "ocr"]
    assert all(task_class(name).name == name for name in TASKS)


def test_an_unknown_task_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match=r"no task named 'nope' \(known: caption, classify, "):
        task_class("nope")
