"""Keys built from (tenant, id) never collide: every separator and escape trick between
two tenants, as strings and as rows in a real milvus-lite collection."""

from __future__ import annotations

from itertools import product
from pathlib import Path

import numpy as np
import pytest

from consumers.config.settings import MilvusSettings
from consumers.pipeline.item_errors import ItemError
from consumers.pipeline.results import Stopwatch
from consumers.tasks.base import Job
from consumers.tasks.embedding import image_row
from consumers.tasks.face import face_id, image_of
from consumers.vectorstore.keys import (
    StagingAreas,
    id_of,
    rpc_key,
    staged_key,
    staged_tenant,
    vector_id,
)
from consumers.vectorstore.store import VectorStore
from schemas.events import ImageSubmitted

# Separators, escapes of them, escapes of escapes, the staging segment names, and ids
# that are another tenant's key spelled out.
TRICKS = [
    "", "a", "north", "x", "north/x", "/", "//", "/x", "x/", "%", "%2F", "%2f", "%25",
    "%252F", "north%2Fx", "a#0", "#", "#0", "shared", "t-", "t-north", "t-north/x", ".",
    "..", "../north", "\\", "north\\x", "a b", "é", "\U0001f600", "\ud800", "north%",
]  # fmt: skip
TENANTS = [t for t in TRICKS if t.isprintable()]  # what ImageSubmitted accepts as a tenant
IDS = [i for i in TRICKS if i]  # ids are non-empty
PAIRS = list(product(TENANTS, IDS))


def test_vector_ids_are_injective_and_decode_back() -> None:
    keys = {vector_id(image_id, tenant): (tenant, image_id) for tenant, image_id in PAIRS}
    assert len(keys) == len(PAIRS)
    for key, (tenant, image_id) in keys.items():
        assert id_of(key, tenant) == image_id
    # The case: no tenant and id "north/x" is not tenant north's "x".
    assert vector_id("north/x", "") != vector_id("x", "north")
    with pytest.raises(ValueError, match="not one of tenant"):
        id_of(vector_id("x", "north"), "south")


def test_face_keys_are_injective_across_tenants_and_images() -> None:
    faces = [(t, i, n) for t, i in PAIRS for n in (0, 1, 10)]
    keys = {vector_id(face_id(i, n), t) for t, i, n in faces}
    assert len(keys) == len(faces)
    for t, i, n in faces:
        assert image_of(id_of(vector_id(face_id(i, n), t), t)) == i


def test_staged_keys_are_injective_and_name_their_tenant() -> None:
    keys = {staged_key("gateway", t, "images", i): (t, i) for t, i in PAIRS}
    assert len(keys) == len(PAIRS)
    for key, (tenant, _) in keys.items():
        found = staged_tenant("gateway", key)
        assert found is not None
        assert found[0] == tenant
        assert found[1].startswith("images/")
        assert found[1].count("/") == 1
    assert staged_tenant("gateway", "legacy/shared/x") is None
    with pytest.raises(ValueError, match="no tenant segment"):
        staged_tenant("gateway", "gateway/images/x")  # the layout before tenant segments


def test_rows_of_every_tenant_and_id_stay_apart_in_milvus(tmp_path: Path) -> None:
    """One row per (tenant, id) pair, all in one collection: none overwrites another, and
    each tenant's search finds exactly its own ids back."""
    pairs = [(t, i) for t, i in PAIRS if i.isprintable() and t in ("", "north", "north/x", "%")]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(pairs), 8)).astype(np.float32)
    rows = []
    for n, (tenant, image_id) in enumerate(pairs):
        event = ImageSubmitted(
            event_id=f"e{n}", image_id=image_id, uri="s3://images/a.jpg", collection=tenant or None
        )
        rows.append(image_row(Job(n, event, Stopwatch()), vectors[n]))
    with VectorStore(MilvusSettings(uri=str(tmp_path / "m.db")), "keys", 8) as store:
        store.upsert(rows)
        assert store.count() == len(pairs)
        for tenant in ("", "north", "north/x", "%"):
            hits = store.search(vectors[:1], top_k=len(pairs), tenant=tenant)[0]
            found = sorted(id_of(key, tenant) for key, _ in hits)
            assert found == sorted(i for t, i in pairs if t == tenant)


def test_staging_areas_let_an_event_read_only_its_own_tenants_uploads() -> None:
    areas = StagingAreas("images", ("gateway", "legacy"))
    north = staged_key("gateway", "north", "images", "x")
    areas.check("images", north, "north")
    areas.check("images", staged_key("legacy", "", "clip", "7"), "")
    areas.check("images", "photos/x.jpg", "north")  # not staged: the bucket list decides
    areas.check("other", north, "south")  # another bucket holds no staging
    areas.check("images", rpc_key("gateway", "f00", 0), None)  # an encoder call
    refused = [
        (north, "south"), (north, ""), (north, None), (north, "north/x"),
        (staged_key("gateway", "", "images", "x"), "north"),
        ("gateway/images/x", ""), ("gateway/images/x", "north"),  # the old layout: nobody's
        ("gateway/t-north%2Fimages/x", "north"),
        (rpc_key("gateway", "f00", 0), ""), (rpc_key("gateway", "f00", 0), "north"),
        (staged_key("gateway", "north", "rpc", "f00", "0"), None),  # RPC: its own area only
    ]  # fmt: skip
    for key, tenant in refused:
        with pytest.raises(ItemError, match="not staged for this tenant"):
            areas.check("images", key, tenant)
