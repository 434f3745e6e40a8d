"""The ``ocr`` task: the text of each image, with word and line boxes, stored for text search.

``prepare`` turns the decoded image into a grayscale page in the decode pool; ``infer``
reads the batch's pages on the OCR workers (``consumers/models/tesseract.py``);
``store_and_search`` upserts one row per image into the OCR text collection (key =
tenant/image id, like every other collection: the text, BM25-indexed by Milvus, and its
lines with boxes) and puts the text in the result's ``ocr`` field. An image without text
is an ``ok`` result with ``ocr.text == ""`` (and a row with empty text, so a second
submission that lost its text replaces the first's).
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

from PIL import Image

from consumers.config.settings import Settings
from consumers.models.tesseract import OcrEncoder, Page, page_of
from consumers.pipeline.results import since
from consumers.tasks.base import ImageTask, Job, stamp, vector_id
from consumers.vectorstore.text_store import TextRow
from schemas.events import OcrText

# What a row keeps of the lines (a Milvus JSON value is capped at 64 KiB by default).
STORED_LINES = 400


def stored_detail(ocr: OcrText) -> dict[str, Any]:
    lines = [line.model_dump(exclude={"words"}) for line in ocr.lines[:STORED_LINES]]
    return {"language": ocr.language, "lines": lines}


class OcrTask(ImageTask[Page, OcrText]):
    name = "ocr"
    needs_store = False  # no vectors: its collection is a text store
    infers_by_encode_images = False  # pages of any size, on the OCR workers

    @classmethod
    def text_collection(cls, settings: Settings) -> str | None:
        return settings.ocr.collection

    @property
    def reader(self) -> OcrEncoder:
        return self.encoder_as(OcrEncoder)

    def prepare(self, image: Image.Image) -> Page:
        return page_of(image)

    def infer(self, prepared: list[Page]) -> list[OcrText]:
        return self.reader.read(prepared)

    def store_and_search(self, jobs: list[Job[Page]], outputs: list[OcrText]) -> None:
        start = perf_counter()
        rows = [
            TextRow(
                id=vector_id(job.event.image_id, job.tenant),
                image_id=job.event.image_id,
                uri=job.event.uri,
                tenant=job.tenant,
                text=ocr.text,
                detail=stored_detail(ocr),
                metadata=job.event.metadata,
            )
            for job, ocr in zip(jobs, outputs, strict=True)
        ]
        self.texts.upsert(rows)
        stamp(jobs, "index", since(start))
        for job, ocr in zip(jobs, outputs, strict=True):
            job.fields["ocr"] = ocr
