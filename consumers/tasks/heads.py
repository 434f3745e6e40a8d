"""Tasks that score each image's CLIP vector and store nothing (``labels``, ``classify``).

They run the CLIP image tower themselves (their own consumer groups, so they scale and
fail on their own) but share the loaded weights with the clip task of the same process
(``consumers/encoders/clip.py`` loads a checkpoint once). Scoring happens in ``infer``,
on the device thread, because it may run a model (the CLIP text tower for label sets).

``classify`` applies every head in ``classify.heads_dir`` (``consumers/heads.py``),
reloaded when the folder changes, so a newly trained head applies to the next batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from consumers.encoders.base import register
from consumers.encoders.clip import ClipEncoder
from consumers.heads import HeadRegistry
from consumers.tasks.base import ImageTask, Job, register_task
from schemas.events import ClassPrediction


@register
class ClassifyEncoder(ClipEncoder):
    name = "classify"


class ClipHeadTask(ImageTask[torch.Tensor, dict[str, Any]]):
    needs_store = False

    @property
    def clip(self) -> ClipEncoder:
        if not isinstance(self.encoder, ClipEncoder):
            raise TypeError(f"the {self.name} task needs a CLIP encoder, not {self.encoder!r}")
        return self.encoder

    def prepare(self, image: Image.Image) -> torch.Tensor:
        return self.encoder.preprocess(image)

    def store_and_search(
        self, jobs: list[Job[torch.Tensor]], outputs: list[dict[str, Any]]
    ) -> None:
        for job, fields in zip(jobs, outputs, strict=True):
            job.watch.add("search", fields.pop("search_ms", 0.0))
            job.fields.update(fields)


@register_task
class ClassifyTask(ClipHeadTask):
    name = "classify"
    _heads: HeadRegistry | None = None

    @property
    def heads(self) -> HeadRegistry:
        if self._heads is None:
            folder = Path(self.encoder.settings.classify.heads_dir)
            self._heads = HeadRegistry(folder, self.encoder.dim, self.encoder.model_name)
        return self._heads

    def infer(self, prepared: list[torch.Tensor]) -> list[dict[str, Any]]:
        vectors = self.encoder.encode_images(prepared)
        per_image: list[list[ClassPrediction]] = [[] for _ in prepared]
        for head in self.heads.refresh():
            for classes, prediction in zip(per_image, head.predict(vectors), strict=True):
                classes.append(prediction)
        return [{"classes": classes} for classes in per_image]
