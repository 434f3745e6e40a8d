"""VectorStore against a real milvus-lite folder under tmp_path."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from consumers.config.settings import MilvusSettings
from consumers.vectorstore.store import (
    StoreRejected,
    StoreSchemaError,
    StoreUnavailable,
    VectorRow,
    VectorStore,
)
from consumers.vectorstore.text_store import TextStore
from consumers.vectorstore.writes import upsert_misfiles

DIM = 8
HOSTILE = 'a" or tenant != "x\\'


def unit_vectors(n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    vectors = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    normed: npt.NDArray[np.float32] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return normed


def rows_for(
    vectors: npt.NDArray[np.float32], prefix: str = "r", tenant: str = ""
) -> list[VectorRow]:
    return [
        VectorRow(
            id=f"{prefix}{i}",
            image_id=f"img-{prefix}{i}",
            uri=f"s3://images/{prefix}{i}.jpg",
            tenant=tenant,
            metadata={"n": str(i)},
            vector=vector,
        )
        for i, vector in enumerate(vectors)
    ]


def lite(path: Path) -> MilvusSettings:
    return MilvusSettings(uri=str(path))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VectorStore]:
    with VectorStore(lite(tmp_path / "new" / "dir" / "m.db"), "vectors", DIM) as opened:
        yield opened


def test_creates_parent_folder_and_empty_collection(tmp_path: Path, store: VectorStore) -> None:
    assert (tmp_path / "new" / "dir" / "m.db").is_dir()
    assert store.count() == 0
    with VectorStore(store.settings, "vectors", DIM) as again:  # existing, same dim
        assert again.count() == 0


def test_exact_duplicate_comes_first_with_cosine_one(store: VectorStore) -> None:
    vectors = unit_vectors(50)
    store.upsert(rows_for(vectors))  # searched right away: no flush, no wait
    result = store.search(vectors[:5] * 3.0, top_k=4)  # scale must not matter for cosine
    for i, hits in enumerate(result):
        assert hits[0][0] == f"r{i}"
        assert abs(hits[0][1] - 1.0) < 1e-4
        scores = [score for _, score in hits]
        assert scores == sorted(scores, reverse=True)
        assert len(hits) == 4
    opposite = store.search(-vectors[:1], top_k=50)[0]
    assert opposite[-1][0] == "r0"
    assert abs(opposite[-1][1] + 1.0) < 1e-4


def test_exclude_ids_apply_per_query_row(store: VectorStore) -> None:
    vectors = unit_vectors(20)
    vectors[1] = vectors[0] + 0.01  # r0 and r1 are each other's nearest neighbour
    store.upsert(rows_for(vectors))
    result = store.search(vectors[:3], top_k=5, exclude_ids=["r0", "r1", None])
    assert result[0][0][0] == "r1"  # r1 excluded only from row 1, not from row 0
    assert result[1][0][0] == "r0"
    assert result[2][0][0] == "r2"  # no exclusion for row 2
    assert all(len(hits) == 5 for hits in result)
    assert "r0" not in [i for i, _ in result[0]]
    assert "r1" not in [i for i, _ in result[1]]


def test_upsert_same_id_replaces_whole_row(store: VectorStore) -> None:
    old, new = unit_vectors(2)
    row = VectorRow(id="x", image_id="img", uri="s3://images/a", vector=old, metadata={"a": "1"})
    store.upsert([row, *rows_for(unit_vectors(3, seed=1))])
    assert store.count() == 4
    store.upsert([VectorRow(id="x", image_id="img2", uri="s3://images/b", vector=new.tolist())])
    store.upsert([VectorRow(id="x", image_id="img2", uri="s3://images/b", vector=new.tolist())])
    assert store.count() == 4
    [stored] = store.get(["x"])
    np.testing.assert_allclose(stored["vector"], new, atol=1e-6)
    assert stored["metadata"] == {}  # replaced, not merged with the old map
    assert (stored["image_id"], stored["uri"], stored["tenant"]) == ("img2", "s3://images/b", "")
    assert store.search(new[None, :], top_k=1)[0][0][0] == "x"


def test_upserts_across_flushes_still_dedupe(tmp_path: Path) -> None:
    old, new = unit_vectors(12), unit_vectors(6, seed=9)
    with VectorStore(lite(tmp_path / "m.db"), "vectors", DIM, flush_every_rows=4) as store:
        rows = rows_for(old)
        for start in range(0, 12, 4):  # every batch ends with a flush into a segment
            store.upsert(rows[start : start + 4])
        store.upsert(rows_for(new))  # r0..r5 again, replacing rows that are in segments
        assert store.count() == 12
        [hits] = store.search(new[:1], top_k=12)
        assert hits[0][0] == "r0"
        assert abs(hits[0][1] - 1.0) < 1e-4
        assert sorted(i for i, _ in hits) == sorted(f"r{i}" for i in range(12))
        [stale] = store.search(old[:1], top_k=1)  # the replaced vector is gone
        assert stale[0][1] < 0.9999


def test_metadata_round_trips_and_get_keeps_order(store: VectorStore) -> None:
    metadata = {"camera": 'Nikon "D850"', "note": "ünïcode ✓", "empty": ""}
    row = VectorRow(
        id="m",
        image_id="img-m",
        uri="s3://images/m",
        vector=unit_vectors(1)[0],
        metadata=metadata,
        tenant="t1",
    )
    store.upsert([row, *rows_for(unit_vectors(2, seed=3))])
    found = store.get(["r1", "missing", "m"])
    assert [r["id"] for r in found] == ["r1", "m"]
    assert found[1]["metadata"] == metadata
    assert found[1]["tenant"] == "t1"


def test_tenants_are_isolated_even_with_quotes(store: VectorStore) -> None:
    vectors = unit_vectors(6)
    store.upsert(rows_for(vectors[:3], "a", tenant="a") + rows_for(vectors[3:], "h", HOSTILE))
    only_a = store.search(vectors, top_k=10, tenant="a")
    assert all(i.startswith("a") for hits in only_a for i, _ in hits)
    assert all(len(hits) == 3 for hits in only_a)
    only_hostile = store.search(vectors, top_k=10, tenant=HOSTILE)
    assert {i for hits in only_hostile for i, _ in hits} == {"h0", "h1", "h2"}
    assert store.search(vectors[:1], top_k=10, tenant="")[0] == []
    assert len(store.search(vectors[:1], top_k=10)[0]) == 6  # None: every tenant
    moved = rows_for(vectors[:1], "a", tenant="b")
    store.upsert(moved)
    assert store.count() == 6
    assert "a0" not in [i for i, _ in store.search(vectors[:1], top_k=10, tenant="a")[0]]
    assert store.search(vectors[:1], top_k=10, tenant="b")[0][0][0] == "a0"


def test_restrict_ids_limits_candidates(store: VectorStore) -> None:
    vectors = unit_vectors(10)
    odd = 'it\'s "odd" \\ id'
    rows = rows_for(vectors)
    rows[7] = VectorRow(id=odd, image_id="i", uri="s3://images/o", vector=vectors[7])
    store.upsert(rows)
    result = store.search(vectors[:2], top_k=10, restrict_ids=["r5", odd, "r0", "nope"])
    assert [sorted(i for i, _ in hits) for hits in result] == [sorted(["r5", odd, "r0"])] * 2
    assert result[0][0][0] == "r0"
    assert store.search(vectors[:2], top_k=10, restrict_ids=[]) == [[], []]
    assert [r["id"] for r in store.get([odd])] == [odd]


def test_dim_mismatch_names_collection_and_both_dims(store: VectorStore) -> None:
    with pytest.raises(StoreSchemaError, match=r"'vectors' has dim 8 .* dim 16"):
        VectorStore(store.settings, "vectors", 16).open()


def test_top_k_zero_never_calls_milvus(tmp_path: Path) -> None:
    never_opened = VectorStore(lite(tmp_path / "m.db"), "vectors", DIM)
    assert never_opened.search(unit_vectors(2), top_k=0) == [[], []]
    with pytest.raises(RuntimeError, match="not open"):
        never_opened.search(unit_vectors(2), top_k=1)


def test_bad_shapes_are_programmer_errors(store: VectorStore) -> None:
    with pytest.raises(ValueError, match="shape"):
        store.upsert([VectorRow(id="x", image_id="x", uri="u", vector=[0.1] * (DIM + 1))])
    with pytest.raises(ValueError, match="expected"):
        store.search(unit_vectors(2)[:, :4], top_k=1)
    with pytest.raises(ValueError, match="exclude_ids"):
        store.search(unit_vectors(2), top_k=1, exclude_ids=["r0"])
    with pytest.raises(ValueError, match="control character"):
        store.search(unit_vectors(1), top_k=1, tenant="a\x00")


def test_unreachable_server_is_store_unavailable() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = MilvusSettings(uri=f"http://127.0.0.1:{port}")
    with pytest.raises(StoreUnavailable):
        VectorStore(settings, "vectors", DIM, timeout_s=2).open()


CHILD = textwrap.dedent(
    """
    import sys, numpy as np
    from consumers.config.settings import MilvusSettings
    from consumers.vectorstore.store import StoreUnavailable, VectorRow, VectorStore
    store = VectorStore(MilvusSettings(uri=sys.argv[1]), "vectors", 8)
    try:
        store.open()
    except StoreUnavailable:
        sys.exit(3)
    store.upsert([VectorRow(id="kept", image_id="k", uri="s3://images/k", vector=np.ones(8))])
    store.close()
    """
)


def run_child(db: Path) -> int:
    root = Path(__file__).resolve().parents[2]
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(db)], cwd=root, check=False, timeout=60
    )
    return child.returncode


def test_data_survives_process_and_lock_is_one_process(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    assert run_child(db) == 0  # wrote a row, then exited
    with VectorStore(lite(db), "vectors", DIM) as store:
        assert [r["id"] for r in store.get(["kept"])] == ["kept"]
        assert run_child(db) == 3  # this process holds the folder now


def test_lost_connection_mid_session_is_store_unavailable(tmp_path: Path) -> None:
    from milvus_lite.server_manager import server_manager_instance

    db = tmp_path / "m.db"
    with VectorStore(lite(db), "vectors", DIM) as store:
        server_manager_instance.release_server(str(db))  # the server goes away under the client
        with pytest.raises(StoreUnavailable):
            store.search(unit_vectors(1), top_k=3)
        with pytest.raises(StoreUnavailable):
            store.upsert(rows_for(unit_vectors(1)))


def _faces_of_a(tenant: str, count: int) -> list[VectorRow]:
    vectors = unit_vectors(count, seed=len(tenant))
    prefix = f"{tenant}/a#" if tenant else "a#"
    return [
        VectorRow(id=f"{prefix}{n}", image_id="a", uri="s3://i/a.jpg", tenant=tenant, vector=v)
        for n, v in enumerate(vectors)
    ]


def _delete_others_keeps_only_what_it_should(store: VectorStore) -> None:
    store.upsert(_faces_of_a("north", 3) + _faces_of_a("south", 1) + rows_for(unit_vectors(1)))
    store.delete_others(["a"], ["north/a#0"], "north")
    ids = ["north/a#0", "north/a#1", "north/a#2", "south/a#0", "r0"]
    assert [row["id"] for row in store.get(ids)] == ["north/a#0", "south/a#0", "r0"]
    store.delete_others(["a", HOSTILE], [], "north")
    assert [row["id"] for row in store.get(ids)] == ["south/a#0", "r0"]
    assert store.count() == 2


def test_delete_others_removes_an_images_other_rows_in_one_tenant(store: VectorStore) -> None:
    _delete_others_keeps_only_what_it_should(store)


def _tenant_search_finds_upserted_rows(store: VectorStore) -> None:
    vectors = unit_vectors(3, seed=7)
    store.upsert(rows_for(vectors[:2], "n", tenant="north") + rows_for(vectors[2:], "d"))
    store.upsert(rows_for(vectors[:1], "n", tenant="north"))  # again: still one row
    assert [key for key, _ in store.search(vectors[:1], 1, tenant="north")[0]] == ["n0"]
    assert [key for key, _ in store.search(vectors[2:], 5, tenant="")[0]] == ["d0"]
    assert store.count() == 3


def test_tenant_search_finds_upserted_rows(store: VectorStore) -> None:
    _tenant_search_finds_upserted_rows(store)


@pytest.mark.integration
def test_tenants_and_deletes_on_a_milvus_server(tmp_path: Path) -> None:
    """The PyPI `milvus` server (2.3.5) files upserted rows under the wrong partition key,
    which a tenant filter then misses: the store inserts there instead."""
    from loadtest.milvus_server import milvus_server

    with milvus_server(tmp_path / "milvus") as (uri, _):
        with VectorStore(MilvusSettings(uri=uri), "tenants", DIM) as store:
            assert store.upsert_misfiles_rows
            _tenant_search_finds_upserted_rows(store)
        with VectorStore(MilvusSettings(uri=uri), "faces", DIM) as store:
            _delete_others_keeps_only_what_it_should(store)
        # 2.3.5 predates Milvus's BM25 (2.5): text collections rank with bm25s instead.
        from tests.search.test_text_search import words_rank_by_bm25

        with TextStore(MilvusSettings(uri=uri), "texts") as texts:
            assert texts.native_bm25 is False
            words_rank_by_bm25(texts)


@pytest.mark.parametrize(
    ("version", "misfiles"),
    [("v2.3.5-lite", True), ("v2.3.21", True), ("v2.4.0", False), ("v2.6.3", False),
     ("milvus_lite-3.2.2", False)],
)  # fmt: skip
def test_which_servers_get_delete_and_insert(version: str, misfiles: bool) -> None:
    assert upsert_misfiles(version) is misfiles


def test_a_request_milvus_refuses_is_store_rejected_in_both_stores(
    tmp_path: Path, store: VectorStore
) -> None:
    """Refused (not unreachable): an item's error, never a retry, whichever store."""
    with pytest.raises(StoreRejected, match="Milvus refused query"):
        store._call("query", filter="no_such_field == 1", output_fields=["id"])
    texts = TextStore(lite(tmp_path / "texts.db"), "texts")
    with texts, pytest.raises(StoreRejected, match="Milvus refused query"):
        texts._call("query", filter="no_such_field == 1", output_fields=["id"])
