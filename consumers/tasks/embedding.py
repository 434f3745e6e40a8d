"""Tasks that store one vector per image and return its nearest other images (CLIP, DINOv2)."""

from __future__ import annotations

from collections import defaultdict
from time import perf_counter
from typing import Any

import numpy as np
import torch
from PIL import Image

from consumers.models.encoder import Vectors
from consumers.pipeline.results import since
from consumers.tasks.base import (
    ImageTask,
    Job,
    stamp,
    strip_tenant,
    vector_id,
)
from consumers.vectorstore.store import VectorRow
from schemas.events import Neighbor


def image_row(job: Job[Any], vector: np.ndarray, **extra: str) -> VectorRow:
    """The row of one image: keyed by (tenant, image id), the event's metadata + ``extra``."""
    event = job.event
    return VectorRow(
        id=vector_id(event.image_id, job.tenant),
        image_id=event.image_id,
        uri=event.uri,
        tenant=job.tenant,
        metadata={**event.metadata, **extra},
        vector=vector,
    )


class EmbeddingTask(ImageTask[torch.Tensor, np.ndarray]):
    def prepare(self, image: Image.Image) -> torch.Tensor:
        return self.encoder.preprocess(image)

    def infer(self, prepared: list[torch.Tensor]) -> list[np.ndarray]:
        return list(self.encoder.encode_images(prepared))

    def store_and_search(self, jobs: list[Job[torch.Tensor]], outputs: list[np.ndarray]) -> None:
        vectors: Vectors = np.stack(outputs)
        start = perf_counter()
        self.store.upsert([self._row(job, vectors[i]) for i, job in enumerate(jobs)])
        stamp(jobs, "index", since(start))
        start = perf_counter()
        self._search(jobs, vectors)
        stamp(jobs, "search", since(start))

    @staticmethod
    def _row(job: Job[torch.Tensor], vector: np.ndarray) -> VectorRow:
        return image_row(job, vector)

    def _search(self, jobs: list[Job[torch.Tensor]], vectors: Vectors) -> None:
        """One batched search per tenant (a filter cannot differ per row of one call)."""
        by_tenant: dict[str, list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            job.fields["neighbors"] = []
            if job.event.top_k > 0:
                by_tenant[job.tenant].append(i)
        for tenant, rows in by_tenant.items():
            top_k = max(jobs[i].event.top_k for i in rows)
            own = [vector_id(jobs[i].event.image_id, tenant) for i in rows]
            hits = self.store.search(vectors[rows], top_k, exclude_ids=own, tenant=tenant)
            for i, found in zip(rows, hits, strict=True):
                jobs[i].fields["neighbors"] = [
                    Neighbor(id=strip_tenant(key, tenant), score=score)
                    for key, score in found[: jobs[i].event.top_k]
                ]


class ClipTask(EmbeddingTask):
    name = "clip"


class Dinov2Task(EmbeddingTask):
    name = "dinov2"
