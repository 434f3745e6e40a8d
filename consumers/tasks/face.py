"""Every face of every image, stored one vector per face and searched against other photos.

``prepare`` detects and aligns the faces of one image in the decode pool; ``infer`` runs
one recognition call over the faces of the whole micro-batch; ``store_and_search``
upserts one row per face (primary key ``{image_id}#{n}``, tenant-scoped like every
vector id), deletes the rows an earlier submission of the same image had beyond the
faces found now, and runs one batched search per tenant. A face's neighbours are faces found
in *other* images: users ask "where else does this person appear?", and the other faces
of the same photo are other people (or the face itself). An image without a face is an
``ok`` result with ``faces: []``. With ``face.people.enabled`` each face is then assigned
a person from those neighbours (``consumers/people/assign.py``); its row keeps the
``person_id``, and the changes wait in ``people_events`` for the results' publish.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from itertools import pairwise
from time import perf_counter

import numpy as np
from PIL import Image

from consumers.models.encoder import Encoder, Vectors
from consumers.models.face.recognition import FaceCrop, FaceEncoder
from consumers.people.assign import Assigner, FaceIn
from consumers.pipeline.results import since
from consumers.tasks.base import ImageTask, Job, stamp, strip_tenant, vector_id
from consumers.vectorstore.keys import face_id, image_of
from consumers.vectorstore.store import VectorRow, VectorStore
from schemas.events import Face, Neighbor, TaskResult
from schemas.people import PersonChanged

FaceJob = Job[list[FaceCrop]]
MODEL_KEY = "face_model"  # on each face row: the model that made the vector


class FaceTask(ImageTask[list[FaceCrop], Vectors]):
    name = "face"

    def __init__(self, encoder: Encoder, store: VectorStore | None) -> None:
        super().__init__(encoder, store)
        self.faces = self.encoder_as(FaceEncoder)
        people = self.faces.face.people
        self.people: Assigner | None = None
        self._neighbours = people.neighbours
        if store is not None and people.enabled:
            self.people = Assigner.for_task(store, encoder.settings.milvus, people, self.model_name)

    def prepare(self, image: Image.Image) -> list[FaceCrop]:
        return self.faces.detect(image)

    def infer(self, prepared: list[list[FaceCrop]]) -> list[Vectors]:
        vectors = self.faces.encode_faces([crop.pixels for crops in prepared for crop in crops])
        bounds = np.cumsum([0, *(len(crops) for crops in prepared)])
        return [vectors[start:end] for start, end in pairwise(bounds)]

    def store_and_search(self, jobs: list[FaceJob], outputs: list[Vectors]) -> None:
        start = perf_counter()
        pairs = zip(jobs, outputs, strict=True)
        rows = [_rows(job, vectors, self.model_name) for job, vectors in pairs]
        if self.people is not None:  # before the upsert: what a redelivered face had
            rows = self.people.keep(rows)
        flat = [row for of_job in rows for row in of_job]
        self.store.upsert(flat)
        self._forget_lost_faces(jobs, flat)
        stamp(jobs, "index", since(start))
        start = perf_counter()
        found = self._search(jobs, outputs)
        persons = self.people.assign_all(_faces_by_tenant(jobs, rows, found)) if self.people else {}
        stamp(jobs, "search", since(start))
        for i, job in enumerate(jobs):
            job.fields["faces"] = [
                Face(
                    face_id=face_id(job.event.image_id, n),
                    bbox=crop.bbox,
                    confidence=crop.confidence,
                    neighbors=found.get((i, n), [])[: job.event.top_k],
                    person_id=persons.get(rows[i][n].id),
                )
                for n, crop in enumerate(job.prepared or [])
            ]

    def people_events(self, results: Sequence[TaskResult]) -> list[PersonChanged]:
        """The people.v1 events of these results' images, once each."""
        if self.people is None:
            return []
        return self.people.outbox.take([r.source_event_id for r in results])

    def close(self) -> None:
        if self.people is not None:
            self.people.registry.close()

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
        """Neighbours per (job, face), up to ``_wanted``; one batched search per tenant."""
        by_tenant: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, job in enumerate(jobs):
            if self._wanted(job) > 0 and len(outputs[i]):
                by_tenant[job.tenant].extend((i, n) for n in range(len(outputs[i])))
        found: dict[tuple[int, int], list[Neighbor]] = {}
        for tenant, faces in by_tenant.items():
            # Enough extra hits that dropping the faces of the query's own image still
            # leaves top_k (a filter cannot differ per row of one batched search).
            top_k = max(self._wanted(jobs[i]) for i, _ in faces)
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
                found[(i, n)] = near[: self._wanted(jobs[i])]
        return found

    def _wanted(self, job: FaceJob) -> int:
        """Neighbours to find: what the event asks, or what people assignment looks at."""
        people = self._neighbours if self.people is not None else 0
        return max(job.event.top_k, people)


def _rows(job: FaceJob, vectors: Vectors, model: str) -> list[VectorRow]:
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
                MODEL_KEY: model,  # recluster's threshold is the model's
            },
            vector=vector,
        )
        for n, (crop, vector) in enumerate(zip(job.prepared or [], vectors, strict=True))
    ]


def _faces_by_tenant(
    jobs: list[FaceJob], rows: list[list[VectorRow]], found: dict[tuple[int, int], list[Neighbor]]
) -> dict[str, list[FaceIn]]:
    """The batch's faces as assignment takes them (rows per job, neighbours per (job,
    face) as the face search found them, as row ids), by tenant."""
    by_tenant: dict[str, list[FaceIn]] = defaultdict(list)
    for i, job in enumerate(jobs):
        for n, row in enumerate(rows[i]):
            near = [(vector_id(x.id, job.tenant), x.score) for x in found.get((i, n), [])]
            by_tenant[job.tenant].append(FaceIn(row, job.event.event_id, near))
    return by_tenant
