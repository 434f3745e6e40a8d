"""Tasks that score each image's CLIP vector and store nothing (``labels``, ``classify``).

They run the CLIP image tower themselves (their own consumer groups, so they scale and
fail on their own) but share the loaded weights with the clip task of the same process
(``consumers/models/clip.py`` loads a checkpoint once). Scoring happens in ``infer``,
on the device thread, because it may run a model (the CLIP text tower for label sets).

``classify`` applies every head in ``classify.heads_dir``
(``consumers/models/classifier_heads.py``),
reloaded when the folder changes, so a newly trained head applies to the next batch.
Heads trained with ``--features clip,ocr`` also read each image's OCR text: the text the
ocr task stored (the OCR text collection, by tenant/image id), or, where it has not run,
the text read now from the decoded image (``consumers/models/tesseract.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
import torch
from PIL import Image

from consumers.config.settings import Settings
from consumers.models.classifier_heads import HeadRegistry
from consumers.models.clip import ClipEncoder
from consumers.models.encoder import Vectors
from consumers.models.tesseract import OcrEncoder, Page, page_of
from consumers.pipeline.results import since
from consumers.tasks.base import ImageTask, Job, stamp, vector_id
from schemas.events import ClassPrediction


class ClipHeadTask(ImageTask[torch.Tensor, dict[str, Any]]):
    needs_store = False

    @property
    def clip(self) -> ClipEncoder:
        return self.encoder_as(ClipEncoder)

    def prepare(self, image: Image.Image) -> torch.Tensor:
        return self.encoder.preprocess(image)

    def store_and_search(
        self, jobs: list[Job[torch.Tensor]], outputs: list[dict[str, Any]]
    ) -> None:
        for job, fields in zip(jobs, outputs, strict=True):
            job.watch.add("search", fields.pop("search_ms", 0.0))
            job.fields.update(fields)


@dataclass(frozen=True)
class Pictured:
    """A classify input: the CLIP tensor, and the page OCR reads when no text is stored."""

    tensor: torch.Tensor
    page: Page


class ClassifyTask(ImageTask[Pictured, np.ndarray]):
    name = "classify"
    needs_store = False
    _heads: HeadRegistry | None = None
    _reader: OcrEncoder | None = None

    @classmethod
    def text_collection(cls, settings: Settings) -> str | None:
        return settings.ocr.collection  # read, for heads trained with the ocr feature

    @property
    def heads(self) -> HeadRegistry:
        if self._heads is None:
            folder = Path(self.encoder.settings.classify.heads_dir)
            self._heads = HeadRegistry(folder, self.encoder.dim, self.encoder.model_name)
        return self._heads

    def prepare(self, image: Image.Image) -> Pictured:
        return Pictured(self.encoder.preprocess(image), page_of(image))

    def infer(self, prepared: list[Pictured]) -> list[np.ndarray]:
        return list(self.encoder.encode_images([p.tensor for p in prepared]))

    def store_and_search(self, jobs: list[Job[Pictured]], outputs: list[np.ndarray]) -> None:
        """Every head on the batch (on the Milvus thread: OCR heads read stored text)."""
        start = perf_counter()
        heads = self.heads.refresh()
        vectors: Vectors = np.stack(outputs)
        texts = self._texts(jobs) if any(head.uses_ocr for head in heads) else None
        per_image: list[list[ClassPrediction]] = [[] for _ in jobs]
        for head in heads:
            for classes, prediction in zip(per_image, head.predict(vectors, texts), strict=True):
                classes.append(prediction)
        for job, classes in zip(jobs, per_image, strict=True):
            job.fields["classes"] = classes
        stamp(jobs, "search", since(start))

    def _texts(self, jobs: list[Job[Pictured]]) -> list[str]:
        """Each image's OCR text: as the ocr task stored it, else read now."""
        keys = [vector_id(job.event.image_id, job.tenant) for job in jobs]
        found = {str(row["id"]): str(row["text"]) for row in self.texts.get(keys)}
        unread = [(key, job) for key, job in zip(keys, jobs, strict=True) if key not in found]
        pages = [job.prepared.page for _, job in unread if job.prepared is not None]
        for (key, _), ocr in zip(unread, self.reader.read(pages), strict=True):
            found[key] = ocr.text
        return [found[key] for key in keys]

    @property
    def reader(self) -> OcrEncoder:
        """Loaded on first need: only heads trained with the ocr feature want it."""
        if self._reader is None:
            settings = self.encoder.settings
            reader = OcrEncoder(settings.ocr, settings)
            reader.load()
            self._reader = reader
        return self._reader
