"""User decisions about persons: names, merges and removed faces, one row per person.

Rows live in their own Milvus collection (``face.people.collection``), keyed like every
vector id (``{tenant}/{person_id}``). Milvus needs a vector per row; these rows carry a
constant two-dimensional one and are only ever fetched by key or tenant, never searched.
Face rows hold the person a face was last assigned to (``metadata.person_id``); the
person shown for it is that id after the merges and removals recorded here (``Decisions``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field, replace

from consumers.config.settings import MilvusSettings, PeopleSettings
from consumers.vectorstore.keys import strip_tenant, vector_id
from consumers.vectorstore.store import VectorRow, VectorStore

PERSON_KEY = "person_id"
_VECTOR = (1.0, 0.0)
_MAX_MERGE_HOPS = 64  # merges form chains; a cycle (two concurrent merges) ends here


def new_person_id(tenant: str, founding_face: str) -> str:
    """Deterministic from the founding face: two consumers founding the same cluster at
    once from the same smallest face agree on the id."""
    digest = hashlib.sha256(f"{tenant}\x1f{founding_face}".encode("utf-8", "surrogatepass"))
    return f"p-{digest.hexdigest()[:12]}"


def with_person(row: VectorRow, person: str | None) -> VectorRow:
    """The row with ``metadata.person_id`` set (unchanged for None)."""
    return replace(row, metadata={**row.metadata, PERSON_KEY: person}) if person else row


@dataclass
class Decisions:
    """One tenant's user decisions, as read at one moment."""

    names: dict[str, str] = field(default_factory=dict)
    merged: dict[str, str] = field(default_factory=dict)  # person -> the person it joined
    removed: dict[str, set[str]] = field(default_factory=dict)  # person -> face ids

    def chain(self, person: str | None) -> list[str]:
        """``person`` and every person it was merged into since, the surviving one last."""
        hops: list[str] = []
        while person is not None and len(hops) < _MAX_MERGE_HOPS:
            hops.append(person)
            person = self.merged.get(person)
        return hops

    def resolve(self, person: str | None) -> str | None:
        """The person a (possibly merged) id now stands for."""
        hops = self.chain(person)
        return hops[-1] if hops else None

    def effective(self, face_id: str, person: str | None) -> str | None:
        """The person shown for a face stored with ``person``: none once a user took the
        face out of it or of any person merged into it since."""
        hops = self.chain(person)
        if not hops or any(face_id in self.removed.get(hop, set()) for hop in hops):
            return None
        return hops[-1]

    def allows(self, face_id: str, person: str) -> bool:
        """Whether assignment may put this face into this person (a user took it out)."""
        return face_id not in self.removed.get(person, set())


class Registry:
    """The people collection, opened on first use; blocking, like VectorStore (call it
    from a thread; calls from several threads are fine)."""

    def __init__(self, milvus: MilvusSettings, settings: PeopleSettings) -> None:
        self.store = VectorStore(milvus, settings.collection, dim=len(_VECTOR))
        self._lock = threading.Lock()  # VectorStore.open must not race other calls

    def open(self) -> None:
        with self._lock:
            self.store.open()

    def close(self) -> None:
        with self._lock:
            self.store.close()

    def decisions(self, tenant: str) -> Decisions:
        self.open()
        found = Decisions()
        for row in self.store.scan(tenant, ["id", "metadata"]):
            person, meta = strip_tenant(str(row["id"]), tenant), row.get("metadata") or {}
            if meta.get("name"):
                found.names[person] = str(meta["name"])
            if meta.get("merged_into"):
                found.merged[person] = str(meta["merged_into"])
            if meta.get("removed"):
                found.removed[person] = set(json.loads(meta["removed"]))
        return found

    def record(
        self,
        tenant: str,
        person: str,
        *,
        name: str | None = None,
        merged_into: str | None = None,
        removed: set[str] | None = None,
    ) -> None:
        """Add decisions to one person's row (read, change, write the whole row)."""
        self.open()
        key = vector_id(person, tenant)
        (old,) = self.store.get([key]) or [{"metadata": {}}]
        meta = dict(old.get("metadata") or {})
        if name is not None:
            meta["name"] = name
        if merged_into is not None:
            meta["merged_into"] = merged_into
        if removed:
            kept = set(json.loads(meta.get("removed", "[]"))) | removed
            meta["removed"] = json.dumps(sorted(kept))
        row = VectorRow(id=key, image_id="", uri="", tenant=tenant, metadata=meta, vector=_VECTOR)
        self.store.upsert([row])
