"""The people of a tenant as users see them: list, one person, rename, merge, remove.

For the gateway and the CLI; blocking (Milvus), so callers run it in a thread. A view
is computed from the face rows (``metadata.person_id``) and the registry's decisions
at the time of the call: one scan of the tenant's faces per call, fine for the
thousands of faces of a photo library, not for millions (docs/faces.md). Every change
returns the ``people.v1`` events the caller publishes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from consumers.config.settings import Settings
from consumers.people.registry import PERSON_KEY, Decisions, Registry
from consumers.vectorstore.keys import image_of, strip_tenant
from consumers.vectorstore.store import VectorStore, stored_dim
from schemas.people import PersonChange, PersonChanged, change_id

FACE_FIELDS = ["id", "image_id", "metadata"]


class UnknownPerson(LookupError):
    pass


@dataclass(frozen=True)
class FaceEntry:
    face_id: str
    image_id: str
    bbox: tuple[int, int, int, int]
    confidence: float


@dataclass
class Person:
    person_id: str
    name: str | None = None
    faces: list[FaceEntry] = field(default_factory=list)

    @property
    def cover(self) -> FaceEntry:
        """The largest, then most confident face: the one a thumbnail shows best."""
        return max(self.faces, key=lambda f: (f.bbox[2] * f.bbox[3], f.confidence, f.face_id))

    @property
    def image_ids(self) -> list[str]:
        return sorted({f.image_id for f in self.faces})


class Book:
    """Opens the faces and people collections on first use (the face consumer creates the
    faces collection; until it has, every tenant has no people)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = Registry(settings.milvus, settings.face.people)
        self._faces: VectorStore | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._faces is not None:
                self._faces.close()
                self._faces = None
            self.registry.close()

    def people(self, tenant: str) -> list[Person]:
        """Every person of the tenant, most faces first."""
        _, found = self._read(tenant)
        return sorted(found.values(), key=lambda p: (-len(p.faces), p.person_id))

    def person(self, tenant: str, person_id: str) -> Person:
        decisions, found = self._read(tenant)
        resolved = decisions.resolve(person_id)
        if resolved not in found:
            raise UnknownPerson(f"no person {person_id!r} in this collection")
        return found[resolved]

    def rename(self, tenant: str, person_id: str, name: str) -> tuple[Person, list[PersonChanged]]:
        person = self.person(tenant, person_id)
        self.registry.record(tenant, person.person_id, name=name)
        person.name = name
        change = _event(tenant, person.person_id, PersonChange.RENAMED, [], name=name)
        return person, [change]

    def merge(
        self, tenant: str, person_id: str, others: list[str]
    ) -> tuple[Person, list[PersonChanged]]:
        """Merge ``others`` into ``person_id``: a redirect per merged person, so faces an
        assignment still writes with a merged id count for the survivor."""
        into = self.person(tenant, person_id)
        merged = {self.person(tenant, other).person_id for other in others} - {into.person_id}
        events = []
        for other in sorted(merged):
            self.registry.record(tenant, other, merged_into=into.person_id)
            events.append(
                _event(tenant, other, PersonChange.MERGED, [], merged_into=into.person_id)
            )
        return self.person(tenant, into.person_id), events

    def remove_face(
        self, tenant: str, person_id: str, face_id: str
    ) -> tuple[Person, list[PersonChanged]]:
        """Take a face out of a person for good: assignment and recluster respect it."""
        person = self.person(tenant, person_id)
        if face_id not in {f.face_id for f in person.faces}:
            raise UnknownPerson(f"face {face_id!r} is not in person {person_id!r}")
        self.registry.record(tenant, person.person_id, removed={face_id})
        event = _event(tenant, person.person_id, PersonChange.FACES_REMOVED, [face_id])
        person.faces = [f for f in person.faces if f.face_id != face_id]
        return person, [event]

    def _read(self, tenant: str) -> tuple[Decisions, dict[str, Person]]:
        faces = self._open()
        decisions = self.registry.decisions(tenant)
        found: dict[str, Person] = {}
        for row in faces.scan(tenant, FACE_FIELDS) if faces is not None else []:
            face, meta = strip_tenant(str(row["id"]), tenant), row["metadata"] or {}
            owner = decisions.effective(face, meta.get(PERSON_KEY))
            if owner is not None:
                entry = found.setdefault(owner, Person(owner, decisions.names.get(owner)))
                entry.faces.append(_entry(face, meta))
        for person in found.values():
            person.faces.sort(key=lambda f: f.face_id)
        return decisions, found

    def _open(self) -> VectorStore | None:
        with self._lock:
            if self._faces is None:
                collection = self.settings.face.collection
                dim = stored_dim(self.settings.milvus, collection)
                if dim is None:
                    return None
                store = VectorStore(self.settings.milvus, collection, dim)
                store.open()
                self._faces = store
            return self._faces


def _entry(face_id: str, meta: dict[str, str]) -> FaceEntry:
    box = [int(v) for v in str(meta.get("face_bbox", "0,0,0,0")).split(",")]
    x, y, w, h = [*box, 0, 0, 0, 0][:4]
    return FaceEntry(
        face_id, image_of(face_id), (x, y, w, h), float(meta.get("face_confidence", 0))
    )


def _event(
    tenant: str,
    person: str,
    change: PersonChange,
    face_ids: list[str],
    *,
    name: str | None = None,
    merged_into: str | None = None,
) -> PersonChanged:
    return PersonChanged(
        event_id=change_id(tenant, person, change, name or "", merged_into or "", *face_ids),
        tenant=tenant,
        person_id=person,
        change=change,
        face_ids=face_ids,
        name=name,
        merged_into=merged_into,
    )
