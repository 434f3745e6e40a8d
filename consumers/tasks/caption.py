"""The ``caption`` task: one batched ``generate`` per micro-batch, stored by image id.

Each image's row in the captions collection (key = tenant/image id, like every other
collection) holds the caption in ``metadata.caption`` beside the event's own metadata,
and the captioner's pooled image feature as its vector; the caption text collection
(``caption.text_collection``) holds it again, BM25-indexed, for text search. The result
carries the caption; ``encode`` is the generation time and ``index`` the upserts.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

import numpy as np
from PIL import Image

from consumers.config.settings import Settings
from consumers.models.captioner import CaptionEncoder
from consumers.pipeline.results import since
from consumers.tasks.base import ImageTask, Job, stamp
from consumers.tasks.embedding import image_row
from consumers.vectorstore.store import VectorRow
from consumers.vectorstore.text_store import TextRow


class CaptionTask(ImageTask[Any, tuple[str, np.ndarray]]):
    name = "caption"
    infers_by_encode_images = False  # generate: many steps, on the device thread

    @classmethod
    def text_collection(cls, settings: Settings) -> str | None:
        return settings.caption.text_collection

    @property
    def captioner(self) -> CaptionEncoder:
        return self.encoder_as(CaptionEncoder)

    def prepare(self, image: Image.Image) -> Any:
        return self.captioner.prepare_input(image)  # a tensor, or an image for chat models

    def infer(self, prepared: list[Any]) -> list[tuple[str, np.ndarray]]:
        captions, vectors = self.captioner.caption(prepared)
        return list(zip(captions, vectors, strict=True))

    def store_and_search(self, jobs: list[Job[Any]], outputs: list[tuple[str, np.ndarray]]) -> None:
        start = perf_counter()
        rows = [
            image_row(job, vector, caption=text)
            for job, (text, vector) in zip(jobs, outputs, strict=True)
        ]
        self.store.upsert(rows)
        if self.text_store is not None:  # the same caption, BM25-indexed for text search
            texts = [text for text, _ in outputs]
            self.text_store.upsert(
                [_text_row(row, text) for row, text in zip(rows, texts, strict=True)]
            )
        stamp(jobs, "index", since(start))
        for job, (text, _) in zip(jobs, outputs, strict=True):
            job.fields["caption"] = text


def _text_row(row: VectorRow, caption: str) -> TextRow:
    return TextRow(id=row.id, image_id=row.image_id, uri=row.uri, tenant=row.tenant, text=caption)
