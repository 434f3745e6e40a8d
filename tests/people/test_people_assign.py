"""Incremental assignment over a real milvus-lite store, on synthetic vectors: what
redelivery, two consumers at once, merges and removals do to persons (docs/faces.md)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from consumers.config.settings import MilvusSettings, PeopleSettings
from consumers.people.assign import Assigner, FaceIn
from consumers.people.recluster import recluster
from consumers.people.registry import Registry
from consumers.vectorstore.store import VectorRow, VectorStore
from schemas.people import PersonChange

DIM = 8
PEOPLE = PeopleSettings(min_faces=2, threshold=0.9)
rng = np.random.default_rng(7)
CENTRES = {who: rng.normal(size=DIM) for who in "ab"}


@pytest.fixture
def milvus(tmp_path: Path) -> MilvusSettings:
    return MilvusSettings(uri=str(tmp_path / "milvus.db"))


@pytest.fixture
def faces(milvus: MilvusSettings) -> Iterator[VectorStore]:
    with VectorStore(milvus, "faces", DIM) as store:
        yield store


def _assigner(faces: VectorStore, milvus: MilvusSettings) -> Assigner:
    return Assigner(faces, Registry(milvus, PEOPLE), PEOPLE, PEOPLE.threshold or 0)


def _row(face: str) -> VectorRow:
    """Face ``a3#0`` is person a's: its centre plus a little noise (seeded by the name)."""
    noise = np.random.default_rng(sum(map(ord, face))).normal(scale=0.05, size=DIM)
    return VectorRow(
        id=face, image_id=face.partition("#")[0], uri="s3://b/k", vector=CENTRES[face[0]] + noise
    )


def _faces(names: Sequence[str], near: Sequence[str]) -> list[FaceIn]:
    """These faces, each with ``near`` and the others of ``names`` as the neighbours its
    search found (scored by their real cosine similarity)."""
    rows = {n: _row(n) for n in [*names, *near]}

    def score(a: str, b: str) -> float:
        u, v = (np.asarray(rows[x].vector) for x in (a, b))
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))

    return [
        FaceIn(rows[n], f"event-{n}", [(m, score(n, m)) for m in [*near, *names] if m != n])
        for n in names
    ]


class _Together:
    """A consumer's view of the store whose reads wait for the other consumer's: both
    read the faces' persons before either writes any (the race, made certain)."""

    def __init__(self, store: VectorStore, barrier: threading.Barrier) -> None:
        self._store, self._barrier = store, barrier

    def get(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        rows = self._store.get(ids)
        self._barrier.wait(timeout=30)
        return rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _persons(faces: VectorStore, names: Sequence[str]) -> dict[str, str | None]:
    return {str(r["id"]): r["metadata"].get("person_id") for r in faces.get(list(names))}


def _run(assigner: Assigner, names: Sequence[str], near: Sequence[str] = ()) -> dict[str, str]:
    assigner.faces.upsert([_row(n) for n in names])
    return assigner.assign("", _faces(names, near))


def test_a_redelivered_face_keeps_its_person_and_its_events(
    faces: VectorStore, milvus: MilvusSettings
) -> None:
    assigner = _assigner(faces, milvus)
    first = _run(assigner, ["a1#0", "a2#0"])
    events = assigner.outbox.take(["event-a1#0"])
    assert len(set(first.values())) == 1
    assert [e.change for e in events] == [PersonChange.CREATED, PersonChange.FACES_ASSIGNED]
    (kept,) = assigner.keep([[_row("a1#0")]])  # the same face read again before its upsert
    assert kept[0].metadata["person_id"] == first["a1#0"]
    faces.upsert(kept)
    again = assigner.assign("", [FaceIn(kept[0], "event-a1#0", [("a2#0", 0.99)])])
    assert again == {"a1#0": first["a1#0"]}
    assert {e.event_id for e in assigner.outbox.take(["event-a1#0"])} <= {
        e.event_id for e in events
    }


def test_too_few_similar_faces_found_no_person(faces: VectorStore, milvus: MilvusSettings) -> None:
    assert _run(_assigner(faces, milvus), ["a1#0"]) == {}
    assert _run(_assigner(faces, milvus), ["b1#0"], near=["a1#0"]) == {}  # a different face


def test_two_consumers_founding_one_cluster_at_once_agree_on_its_person(
    faces: VectorStore, milvus: MilvusSettings
) -> None:
    cluster = ["a1#0", "a2#0", "a3#0", "a4#0"]
    faces.upsert([_row(n) for n in cluster])  # both batches upserted, then searched
    barrier = threading.Barrier(2)
    consumers = [_assigner(cast(VectorStore, _Together(faces, barrier)), milvus) for _ in "xy"]
    for consumer in consumers:
        consumer.registry.open()  # started consumers: the people collection exists
    halves = [(cluster[:2], cluster[2:]), (cluster[2:], cluster[:2])]
    with ThreadPoolExecutor(2) as pool:
        runs = [
            pool.submit(c.assign, "", _faces(mine, theirs))
            for c, (mine, theirs) in zip(consumers, halves, strict=True)
        ]
        for run in runs:
            run.result(timeout=60)  # re-raises what failed in the thread
    # Each founded from the smallest face it saw, a1#0 for both: one id.
    assert len(set(_persons(faces, cluster).values())) == 1


def test_consumers_blind_to_each_other_split_a_cluster_until_recluster(
    faces: VectorStore, milvus: MilvusSettings
) -> None:
    x, y = _assigner(faces, milvus), _assigner(faces, milvus)
    first, second = _run(x, ["a1#0", "a2#0"]), _run(y, ["a3#0", "a4#0"])  # each sees its own
    split = {*first.values(), *second.values()}
    assert len(split) == 2  # the bound: one person per consumer that founded it unseen
    later = _run(x, ["a5#0"], near=["a1#0", "a2#0", "a3#0", "a4#0"])
    assert later["a5#0"] in split  # steady state: no third person
    done = recluster(faces, x.registry, "", PEOPLE.threshold or 0, PEOPLE.min_faces)
    assert len(done.persons) == 1
    assert set(done.persons) <= split  # one of the old ids (and its name) survives


def test_a_merge_and_a_name_hold_against_assignments_made_after_them(
    faces: VectorStore, milvus: MilvusSettings
) -> None:
    assigner = _assigner(faces, milvus)
    (a,) = set(_run(assigner, ["a1#0", "a2#0"]).values())
    (b,) = set(_run(assigner, ["b1#0", "b2#0"]).values())
    assigner.registry.record("", b, merged_into=a)  # a user: "they are one person"
    assigner.registry.record("", a, name="Ann")
    later = _run(assigner, ["b3#0"], near=["b1#0", "b2#0"])  # its neighbours still say b
    assert later == {"b3#0": a}
    decisions = assigner.registry.decisions("")
    assert (decisions.names, decisions.merged) == ({a: "Ann"}, {b: a})


def test_a_face_taken_out_of_a_person_stays_out(faces: VectorStore, milvus: MilvusSettings) -> None:
    assigner = _assigner(faces, milvus)
    (a,) = set(_run(assigner, ["a1#0", "a2#0", "a3#0"]).values())
    assigner.registry.record("", a, removed={"a3#0"})
    (kept,) = assigner.keep([[_row("a3#0")]])  # the image processed again
    faces.upsert(kept)
    assert assigner.assign("", [FaceIn(kept[0], "e", [("a1#0", 0.99), ("a2#0", 0.99)])]) == {}
    done = recluster(faces, assigner.registry, "", PEOPLE.threshold or 0, PEOPLE.min_faces)
    assert done.persons == {a: ["a1#0", "a2#0"]}
