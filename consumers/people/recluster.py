"""``imagestream people recluster``: rebuild one tenant's persons from its stored faces.

DBSCAN (scikit-learn) over the tenant's face vectors with cosine distance: ``eps`` is
1 - the same-person threshold and ``min_samples`` the faces that found a person, the
rules incremental assignment follows, so a rebuild finds what assignment would have
found with every face seen at once. It joins persons that concurrent consumers split
and splits what chained neighbours joined. Person ids survive where they can: each new
cluster, biggest first, keeps the id most of its faces had, so names and merges (keyed
by id) stay; only clusters of faces that had no person get a new id. A face a user took
out of a person stays out; a face DBSCAN calls noise keeps its person when a user named it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from consumers.people.registry import PERSON_KEY, Decisions, Registry, new_person_id
from consumers.vectorstore.keys import strip_tenant
from consumers.vectorstore.store import FIELDS, VectorRow, VectorStore
from schemas.people import PersonChange, PersonChanged, change_id


@dataclass
class Reclustered:
    faces: int = 0
    changed: int = 0
    persons: dict[str, list[str]] = field(default_factory=dict)  # person -> face ids
    events: list[PersonChanged] = field(default_factory=list)


def recluster(
    faces: VectorStore, registry: Registry, tenant: str, threshold: float, min_faces: int
) -> Reclustered:
    """Blocking. Rewrites the face rows whose person changes; returns what it did."""
    from sklearn.cluster import DBSCAN

    rows = faces.scan(tenant, FIELDS)
    done = Reclustered(faces=len(rows))
    if not rows:
        return done
    decisions = registry.decisions(tenant)
    ids = [strip_tenant(str(r["id"]), tenant) for r in rows]
    stored = [(r["metadata"] or {}).get(PERSON_KEY) for r in rows]
    old = [decisions.effective(i, p) for i, p in zip(ids, stored, strict=True)]
    vectors = np.asarray([r["vector"] for r in rows], dtype=np.float32)
    labels = (
        DBSCAN(eps=1.0 - threshold, min_samples=min_faces, metric="cosine").fit(vectors).labels_
    )
    new = _name_clusters(tenant, ids, old, labels.tolist(), decisions)
    changed = []
    for row, person in zip(rows, new, strict=True):
        meta = {k: v for k, v in (row["metadata"] or {}).items() if k != PERSON_KEY}
        if (row["metadata"] or {}).get(PERSON_KEY) != person:
            changed.append({**row, "metadata": meta | ({PERSON_KEY: person} if person else {})})
    if changed:
        faces.upsert([VectorRow.stored(r) for r in changed])
    done.changed = len(changed)
    for face, person in zip(ids, new, strict=True):
        if person is not None:
            done.persons.setdefault(person, []).append(face)
    done.events = [
        PersonChanged(
            event_id=change_id(tenant, person, PersonChange.RECLUSTERED, *sorted(members)),
            tenant=tenant,
            person_id=person,
            change=PersonChange.RECLUSTERED,
            face_ids=sorted(members),
            name=decisions.names.get(person),
        )
        for person, members in sorted(done.persons.items())
    ]
    return done


def _name_clusters(
    tenant: str, ids: list[str], old: list[str | None], labels: list[int], decisions: Decisions
) -> list[str | None]:
    """The person of every face: clusters keep the majority old id, biggest cluster first."""
    clusters: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        if label >= 0:
            clusters.setdefault(label, []).append(i)
    new: list[str | None] = [p if p in decisions.names else None for p in old]  # noise
    taken: set[str] = set()
    for members in sorted(clusters.values(), key=lambda m: (-len(m), min(ids[i] for i in m))):
        votes = Counter(p for i in members if (p := old[i]) is not None and p not in taken)
        person = new_person_id(tenant, min(ids[i] for i in members))
        if votes:
            person = min(votes, key=lambda p: (-votes[p], p))
        taken.add(person)
        for i in members:
            new[i] = person if decisions.allows(ids[i], person) else None
    return new
