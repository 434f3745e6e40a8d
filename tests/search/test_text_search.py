"""Text collections on milvus-lite (Milvus's own BM25, and the bm25s path older servers take)
and the fusion of ranked lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumers.config.settings import MilvusSettings
from consumers.search.fusion import bm25_sum, reciprocal_rank_fusion
from consumers.vectorstore.store import StoreSchemaError
from consumers.vectorstore.text_store import TextRow, TextStore, has_full_text_search

ROWS = {
    "sign": "HEDGEHOG CROSSING slow down",
    "menu": "Breakfast served daily, pancakes",
    "poster": "hedgehog rescue: hedgehog hospital open daily",
    "blank": "",
}


def _row(key: str, text: str, tenant: str = "") -> TextRow:
    image_id = key.rpartition("/")[2]
    return TextRow(
        id=key, image_id=image_id, uri=f"s3://images/{image_id}", text=text, tenant=tenant
    )


@pytest.mark.parametrize("native", [True, False], ids=["milvus-bm25", "bm25s"])
def test_words_rank_by_bm25_within_tenant_and_ids(tmp_path: Path, native: bool) -> None:
    settings = MilvusSettings(uri=str(tmp_path / "milvus.db"))
    with TextStore(settings, "texts", native_bm25=native) as store:
        words_rank_by_bm25(store)


def words_rank_by_bm25(store: TextStore) -> None:
    """Shared with the Milvus server test (tests/vectorstore/test_store.py), which takes the bm25s
    path."""
    store.upsert([_row(k, t) for k, t in ROWS.items()])
    store.upsert([_row("acme/sign", "hedgehog hedgehog hedgehog", tenant="acme")])
    store.upsert([_row("menu", "Breakfast served daily, hedgehog pancakes")])  # replaces

    (hits,) = store.search(["Hedgehog"], 10, tenant="")
    # Twice in a short text beats once in a longer one; rows without the word are absent.
    assert [key for key, _ in hits] == ["poster", "sign", "menu"]
    assert all(score > 0 for _, score in hits)
    assert hits[0][1] > hits[1][1]
    daily, nothing = store.search(["open daily", "zebra"], 10, tenant="")
    assert daily[0][0] == "poster"
    assert nothing == []
    (only,) = store.search(["hedgehog"], 10, tenant="", restrict_ids=["sign", "blank"])
    assert [key for key, _ in only] == ["sign"]
    (acme,) = store.search(["hedgehog"], 10, tenant="acme")
    assert [key for key, _ in acme] == ["acme/sign"]
    assert store.get(["menu"])[0]["text"].endswith("hedgehog pancakes")


def test_a_collection_of_the_other_kind_is_refused(tmp_path: Path) -> None:
    settings = MilvusSettings(uri=str(tmp_path / "milvus.db"))
    with TextStore(settings, "texts", native_bm25=True):
        pass
    with pytest.raises(StoreSchemaError, match="not a text collection of this kind"):
        TextStore(settings, "texts", native_bm25=False).open()


def test_full_text_search_needs_milvus_2_5() -> None:
    assert has_full_text_search("v2.5.4")
    assert has_full_text_search("milvus_lite-3.2.2")
    assert not has_full_text_search("v2.3.5")  # the PyPI milvus server
    assert not has_full_text_search("v2.4.9")


def test_reciprocal_rank_fusion_adds_one_over_k_plus_rank() -> None:
    lists = {
        "clip": [("a", 0.9), ("b", 0.8), ("c", 0.1)],
        "ocr": [("c", 7.0)],
        "caption": [("b", 2.0), ("c", 1.0)],
    }
    fused = reciprocal_rank_fusion(lists, top_k=3, k=60)
    scores = {n.id: n.score for n in fused}
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61 + 1 / 62)
    assert scores["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert [n.id for n in fused] == ["c", "b", "a"]
    assert fused[0].lists == ["caption", "clip", "ocr"]
    assert fused[2].lists == ["clip"]


def test_ties_go_to_the_image_more_lists_found_and_text_mode_sums_bm25() -> None:
    tie = reciprocal_rank_fusion({"clip": [("a", 0.5)], "ocr": [("b", 1.0)]}, 2, k=60)
    assert tie[0].score == tie[1].score  # alphabetical only when the lists agree too
    assert [n.id for n in tie] == ["a", "b"]
    summed = bm25_sum({"ocr": [("x", 2.0), ("y", 1.5)], "caption": [("y", 1.0)]}, top_k=5)
    assert [(n.id, n.score, n.lists) for n in summed] == [
        ("y", 2.5, ["caption", "ocr"]),
        ("x", 2.0, ["ocr"]),
    ]
