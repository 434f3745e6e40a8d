"""Incremental assignment: a face joins the person of its close neighbours.

Runs on the face task's store thread after the batch's rows are upserted and searched.
A face whose neighbours (similarity >= the threshold) already belong to a person joins
the one most of them belong to; with none, the face and its close unassigned neighbours
found a new person once they are ``min_faces`` together. Faces of one batch are assigned
in order, so a batch's second photo of someone joins the person its first just founded.

Delivery and concurrency (docs/faces.md):
- Redelivery: ``kept`` reads a face's stored row before it is overwritten; when its
  vector is the same face, its person stays. Events repeat with the same ``event_id``.
- Two consumers founding the same cluster at once agree on its id when they found it
  from the same smallest face id (``new_person_id``); otherwise a cluster can split into
  at most one person per consumer that founded it concurrently, and every later face joins
  the one most of its neighbours hold. ``imagestream people recluster`` joins the split.
- Names, merges and removals are read from the registry and never written here, so no
  assignment can undo them; an assignment that raced a merge writes the merged id, which
  resolves to the surviving person.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from consumers.config.settings import MilvusSettings, PeopleSettings
from consumers.models.face.deepface_env import use_deepface
from consumers.models.weights import RANDOM_PREFIX
from consumers.people.registry import PERSON_KEY, Decisions, Registry, new_person_id, with_person
from consumers.vectorstore.keys import strip_tenant
from consumers.vectorstore.store import VectorRow, VectorStore
from schemas.people import PersonChange, PersonChanged, change_id

OUTBOX_EVENTS = 4096  # source events whose people events wait for their results' publish


@dataclass(frozen=True)
class FaceIn:
    """One face of the batch: its stored row, the event it came from, its neighbours."""

    row: VectorRow
    source_event_id: str
    neighbours: Sequence[tuple[str, float]]  # (row id, cosine similarity), best first


class Outbox:
    """People events by source event id, taken when that event's result is published.

    A retried batch records the same events again (same ids); an event whose result is
    never published (its partition was revoked) ages out after OUTBOX_EVENTS others."""

    def __init__(self, limit: int = OUTBOX_EVENTS) -> None:
        self._events: OrderedDict[str, list[PersonChanged]] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def put(self, source_event_id: str, events: list[PersonChanged]) -> None:
        with self._lock:
            self._events[source_event_id] = events
            self._events.move_to_end(source_event_id)
            while len(self._events) > self._limit:
                self._events.popitem(last=False)

    def take(self, source_event_ids: Sequence[str]) -> list[PersonChanged]:
        with self._lock:
            return [e for i in source_event_ids for e in self._events.pop(i, [])]


class Assigner:
    """Blocking (Milvus calls): run it on the store thread."""

    def __init__(
        self, faces: VectorStore, registry: Registry, settings: PeopleSettings, threshold: float
    ) -> None:
        self.faces, self.registry = faces, registry
        self.min_faces, self.threshold = settings.min_faces, threshold
        self.outbox = Outbox()

    @classmethod
    def for_task(
        cls, faces: VectorStore, milvus: MilvusSettings, settings: PeopleSettings, model: str
    ) -> Assigner:
        threshold = same_person_threshold(model, settings)
        return cls(faces, Registry(milvus, settings), settings, threshold)

    def keep(self, rows: list[list[VectorRow]]) -> list[list[VectorRow]]:
        """The batch's rows (per job) with the person their stored rows already hold."""
        kept = self.kept([row for of_job in rows for row in of_job])
        return [[with_person(row, kept.get(row.id)) for row in of_job] for of_job in rows]

    def assign_all(self, by_tenant: Mapping[str, Sequence[FaceIn]]) -> dict[str, str]:
        """Row id -> person for a batch's faces, grouped by tenant; one pass per tenant."""
        persons: dict[str, str] = {}
        for tenant, faces in by_tenant.items():
            persons |= self.assign(tenant, faces)
        return persons

    def kept(self, rows: Sequence[VectorRow]) -> dict[str, str]:
        """Row id -> the person its stored row holds, where the stored face is this face."""
        new = {row.id: np.asarray(row.vector, dtype=np.float32) for row in rows}
        kept = {}
        for old in self.faces.get(list(new)):
            person = (old.get("metadata") or {}).get(PERSON_KEY)
            vector = np.asarray(old["vector"], dtype=np.float32)
            if person and _cosine(vector, new[str(old["id"])]) >= self.threshold:
                kept[str(old["id"])] = str(person)
        return kept

    def assign(self, tenant: str, faces: Sequence[FaceIn]) -> dict[str, str]:
        """Row id -> person for the batch's faces of one tenant that have one now."""
        decisions = self.registry.decisions(tenant)
        close = {f.row.id: [k for k, s in f.neighbours if s >= self.threshold] for f in faces}
        stored = {
            str(r["id"]): r for r in self.faces.get(sorted({k for v in close.values() for k in v}))
        }
        known = {k: (r.get("metadata") or {}).get(PERSON_KEY) for k, r in stored.items()}
        known |= {f.row.id: f.row.metadata.get(PERSON_KEY) for f in faces}
        run = _Run(tenant, decisions, known, self.min_faces)
        for face in faces:
            run.place(face.row.id, [k for k in close[face.row.id] if k in known])
        batch = {f.row.id: f.row for f in faces}
        rows = [
            with_person(batch[k] if k in batch else VectorRow.stored(stored[k]), p)
            for k, p in run.updates.items()
        ]
        self.faces.upsert(rows)
        persons = {f.row.id: p for f in faces if (p := run.person(f.row.id))}
        self._events(tenant, faces, persons, run)
        return persons

    def _events(
        self, tenant: str, faces: Sequence[FaceIn], persons: dict[str, str], run: _Run
    ) -> None:
        """Per source event: one CREATED per person its faces founded, then one
        FACES_ASSIGNED per person its faces belong to (new or kept: a redelivery repeats
        the same event ids, so a follower that missed them gets them)."""
        source_of = {f.row.id: f.source_event_id for f in faces}
        by_source: dict[str, list[PersonChanged]] = {f.source_event_id: [] for f in faces}
        for person, founder in run.founded.items():
            members = sorted(strip_tenant(k, tenant) for k in run.members[person])
            by_source[source_of[founder]].append(
                _event(tenant, person, PersonChange.CREATED, members, source_of[founder])
            )
        assigned: dict[tuple[str, str], list[str]] = {}
        for face in faces:
            if face.row.id in persons:
                key = (face.source_event_id, persons[face.row.id])
                assigned.setdefault(key, []).append(strip_tenant(face.row.id, tenant))
        for (source, person), ids in assigned.items():
            by_source[source].append(
                _event(tenant, person, PersonChange.FACES_ASSIGNED, ids, source)
            )
        for source, events in by_source.items():
            self.outbox.put(source, events)


class _Run:
    """One tenant's assignment pass over a batch."""

    def __init__(
        self, tenant: str, decisions: Decisions, known: dict[str, str | None], min_faces: int
    ) -> None:
        self.tenant, self.decisions, self.known, self.min_faces = (
            tenant,
            decisions,
            known,
            min_faces,
        )
        self.updates: dict[str, str] = {}
        self.founded: dict[str, str] = {}  # person -> the row id that founded it
        self.members: dict[str, list[str]] = {}

    def person(self, key: str) -> str | None:
        return self.decisions.effective(self._face(key), self.known.get(key))

    def place(self, key: str, close: list[str]) -> None:
        if self.person(key) is not None:
            return
        face = self._face(key)
        votes = Counter(
            p for k in close if (p := self.person(k)) and self.decisions.allows(face, p)
        )
        if votes:
            self._set(key, min(votes, key=lambda p: (-votes[p], p)))
            return
        members = [key, *(k for k in close if self.person(k) is None)]
        if len(members) < self.min_faces:
            return
        person = new_person_id(self.tenant, min(self._face(k) for k in members))
        self.founded[person] = key
        self.members[person] = [k for k in members if self.decisions.allows(self._face(k), person)]
        for member in self.members[person]:
            self._set(member, person)

    def _set(self, key: str, person: str) -> None:
        self.known[key] = person
        self.updates[key] = person

    def _face(self, key: str) -> str:
        return strip_tenant(key, self.tenant)


def _event(
    tenant: str, person: str, change: PersonChange, face_ids: list[str], source: str
) -> PersonChanged:
    return PersonChanged(
        event_id=change_id(tenant, person, change, source, *face_ids),
        tenant=tenant,
        person_id=person,
        change=change,
        face_ids=face_ids,
        source_event_id=source,
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norm if norm else 0.0


def same_person_threshold(model_spec: str, settings: PeopleSettings) -> float:
    """Cosine similarity from which two faces count as one person: the setting, else
    1 - DeepFace's tuned cosine distance for the model (random:<model> uses the model's)."""
    if settings.threshold is not None:
        return settings.threshold
    use_deepface(None)  # on the PyTorch backend, as the encoder runs it
    from deepface.modules.verification import find_threshold

    return 1.0 - float(find_threshold(model_spec.removeprefix(RANDOM_PREFIX), "cosine"))
