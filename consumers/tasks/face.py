"""Every face of every image, stored one vector per face and searched against other photos.

``prepare`` detects and aligns the faces of one image in the decode pool; ``infer`` runs
one recognition call over the faces of the whole micro-batch; ``store_and_search``
upserts one row per face (primary key ``{image_id}#{n}``, tenant-scoped like every
vector id), deletes the rows an earlier submission of the same image had beyond the
faces found now, and runs one batched search per tenant. A face's neighbours are faces found
in *other* images: users ask "where else does this person appear?", and the other faces
of the same photo are other people (or the face itself). An image without a face is an
``ok`` result with ``faces: []``.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise
from time import perf_counter

import numpy as np
from PIL import Image

from consumers.encoders.base import Encoder, Vectors
from consumers.encoders.face import FaceCrop, FaceEncoder
from consumers.results import since
from consumers.store import VectorRow, VectorStore
from consumers.tasks.base import ImageTask, Job, register_task, stamp, strip_tenant, vector_id
from schemas.events import Face, Neighbor

FaceJob = Job[list[FaceCrop]]


def face_id(image_id: str, n: int) -> str:
    return f"{image_id}#{n}"


def image_of(face_key: str) -> str:
    """The image id inside a face id (image ids may contain '#'; n never does)."""
    return face_key.rpartition("#")[0]


@register_task
class FaceTask(ImageTask[list[FaceCrop], Vectors]):
    name = "face"

    def __init__(self, encoder: Encoder, store: VectorStore | None) -> None:
        if not isinstance(encoder, FaceEncoder):
            raise TypeError(f"the face task needs a FaceEncoder, not {type(encoder).__name__}")
        super().__init__(encoder, store)
        self.faces = encoder

    def prepare(self, image: Image.Image) -> list[FaceCrop]:
        return self.faces.detect(image)

    def infer(self, prepared: list[list[FaceCrop]]) -> list[Vectors]:
        vectors = self.faces.encode_faces([crop.pixels for crops in prepared for crop in crops])
        bounds = np.cumsum([0, *(len(crops) for crops in prepared)])
        return [vectors[start:end] for start, end in pairwise(bounds)]

    def store_and_search(self, jobs: list[FaceJob], outputs: list[Vectors]) -> None:
        start = perf_counter()
        pairs = zip(jobs, outputs, strict=True)
        rows = [row for job, vectors in pairs for row in _rows(job, vectors)]
        self.store.upsert(rows)
        self._forget_lost_faces(jobs, rows)
        stamp(jobs, "index", since(start))
        start = perf_counter()
        found = self._search(jobs, outputs)
        stamp(jobs, "search", since(start))
        for i, job in enumerate(jobs):
            job.fields["faces"] = [
                Face(
                    face_id=face_id(job.event.image_id, n),
                    bbox=crop.bbox,
                    confidence=crop.confidence,
                    neighbors=found.get((i, n), []),
                )
                for n, crop in enumerate(job.prepared or [])
            ]

    def _forget_lost_faces(self, jobs: list[FaceJob], rows: list[VectorRow]) -> None:
        """An image submitted again may show fewer faces (a replaced object, another
        detector): its rows beyond the faces found now would otherwise stay and keep
        turning up as neighbours. One delete per tenant in the batch."""
        images: dict[str, set[str]] = defaultdict(set)
        kept: dict[str, list[str]] = defaultdict(list)
        for job in jobs:
            images[job.tenant].add(job.event.image_id)
        for row in rows:
            kept[row.tenant].append(row.id)
        for tenant, image_ids in images.items():
            self.store.delete_others(sorted(image_ids), kept[tenant], tenant)

    def _search(
        self, jobs: list[FaceJob], outputs: list[Vectors]
    ) -> dict[tuple[int, int], list[Neighbor]]:
        """Neighbours per (job, face); one batched search per tenant."""
        by_tenant: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, job in enumerate(jobs):
            if job.event.top_k > 0 and len(outputs[i]):
                by_tenant[job.tenant].extend((i, n) for n in range(len(outputs[i])))
        found: dict[tuple[int, int], list[Neighbor]] = {}
        for tenant, faces in by_tenant.items():
            # Enough extra hits that dropping the faces of the query's own image still
            # leaves top_k (a filter cannot differ per row of one batched search).
            top_k = max(jobs[i].event.top_k for i, _ in faces)
            limit = top_k + max(len(outputs[i]) for i, _ in faces)
            queries = np.stack([outputs[i][n] for i, n in faces])
            hits = self.store.search(queries, limit, tenant=tenant)
            for (i, n), row in zip(faces, hits, strict=True):
                own = jobs[i].event.image_id
                near = [
                    Neighbor(id=key, score=score, image_id=image_of(key))
                    for key, score in ((strip_tenant(k, tenant), s) for k, s in row)
                    if image_of(key) != own
                ]
                found[(i, n)] = near[: jobs[i].event.top_k]
        return found


def _rows(job: FaceJob, vectors: Vectors) -> list[VectorRow]:
    event = job.event
    return [
        VectorRow(
            id=vector_id(face_id(event.image_id, n), job.tenant),
            image_id=event.image_id,
            uri=event.uri,
            tenant=job.tenant,
            # The collection's scalar fields are shared by every task; the box and the
            # confidence travel in the metadata JSON (Milvus can filter on it).
            metadata={
                **event.metadata,
                "face_bbox": ",".join(map(str, crop.bbox)),
                "face_confidence": f"{crop.confidence:.4f}",
            },
            vector=vector,
        )
        for n, (crop, vector) in enumerate(zip(job.prepared or [], vectors, strict=True))
    ]
