"""consumers/models/registry.py: one table says which encoder serves each task."""

from __future__ import annotations

import pytest

from consumers.config.settings import Settings
from consumers.models.captioner import CaptionEncoder
from consumers.models.clip import ClipEncoder
from consumers.models.face.recognition import FaceEncoder
from consumers.models.registry import encoder_class, make_encoder, registered
from consumers.models.tesseract import OcrEncoder
from consumers.tasks.registry import TASKS


def test_every_task_has_an_encoder_and_the_clip_scorers_share_clips() -> None:
    assert registered() == sorted(TASKS)
    assert {encoder_class(t) for t in ("clip", "labels", "classify")} == {ClipEncoder}
    assert encoder_class("caption") is CaptionEncoder
    assert encoder_class("face") is FaceEncoder
    assert encoder_class("ocr") is OcrEncoder


def test_an_unknown_task_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match=r"no encoder registered for task 'nope' \(known: caption, "):
        encoder_class("nope")


def test_make_encoder_builds_the_tasks_encoder_for_its_own_settings() -> None:
    settings = Settings.model_construct()
    encoder = make_encoder("labels", settings)
    assert type(encoder) is ClipEncoder
    assert encoder.task_settings is settings.task("labels")
