"""Which encoder serves a task: one table of task names, written out here.

``labels`` and ``classify`` score CLIP image vectors, so they run CLIP's encoder (and
share its loaded weights with the clip task of the same process). A model spec that
starts with ``sim:`` (``consumers/models/sim.py``) replaces the clip and dinov2 encoders
with the simulated accelerator.
"""

from __future__ import annotations

from consumers.config.settings import Settings
from consumers.models.captioner import CaptionEncoder
from consumers.models.clip import ClipEncoder
from consumers.models.dinov2 import Dinov2Encoder
from consumers.models.encoder import Encoder
from consumers.models.face.recognition import FaceEncoder
from consumers.models.sim import PREFIX as SIM_PREFIX
from consumers.models.sim import SimEncoder
from consumers.models.tesseract import OcrEncoder

ENCODERS: dict[str, type[Encoder]] = {
    "caption": CaptionEncoder,
    "classify": ClipEncoder,
    "clip": ClipEncoder,
    "dinov2": Dinov2Encoder,
    "face": FaceEncoder,
    "labels": ClipEncoder,
    "ocr": OcrEncoder,
}
SIM_TASKS = ("clip", "dinov2")  # the tasks a sim: spec may stand in for


def encoder_class(task: str) -> type[Encoder]:
    try:
        return ENCODERS[task]
    except KeyError:
        known = ", ".join(registered())
        raise KeyError(f"no encoder registered for task {task!r} (known: {known})") from None


def registered() -> list[str]:
    return sorted(ENCODERS)


def make_encoder(task: str, settings: Settings) -> Encoder:
    """The encoder for ``task``, unloaded: the table's, or the simulated accelerator where
    the task's model spec starts with ``sim:``."""
    section = settings.task(task)
    if section.model.startswith(SIM_PREFIX) and task in SIM_TASKS:
        return SimEncoder(section, settings)
    return encoder_class(task)(section, settings)
