"""Milvus access for one vector space: create the collection, upsert rows, batched search.

Plain types only (no pydantic) so the pipeline decides how results become events.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pymilvus import DataType, MilvusClient, MilvusException

from consumers.config.settings import MilvusSettings
from consumers.vectorstore.connection import OpenCollection, connect, is_lite
from consumers.vectorstore.filters import filter_expr, others_expr
from consumers.vectorstore.milvus_errors import (
    StoreRejected,
    StoreSchemaError,
    StoreUnavailable,
    translate_errors,
)

__all__ = [
    "StoreRejected", "StoreSchemaError", "StoreUnavailable", "VectorRow", "VectorStore",
    "stored_dim",
]  # fmt: skip

log = logging.getLogger(__name__)

# Milvus caps VARCHAR in bytes: 512 characters of any script (4 bytes each) plus a "#n" suffix.
ID_MAX_BYTES = 4096
URI_MAX_BYTES = 8192
TENANT_MAX_BYTES = 256
# milvus-lite rebuilds a snapshot of its unflushed rows row by row on every search (about
# 60 ms per 1k 512-d rows, under a lock that also blocks writes); flushing keeps that small.
# Upsert 32 + search 32, 512-d, CPU per image to 9.6k rows: 5.5 ms flushing every 2048
# rows, 4.4 every 1024, 3.9 every 512 or 256 (docs/performance.md).
LITE_FLUSH_EVERY_ROWS = 512
QUERY_WINDOW = 16_384  # Milvus's largest offset + limit for one query
INDEX_BUILD_PARAMS = {"HNSW": {"M": 16, "efConstruction": 200}, "IVF_FLAT": {"nlist": 1024}}
FIELDS = ["id", "image_id", "uri", "tenant", "metadata", "vector"]

Vector = npt.NDArray[np.float32] | Sequence[float]
Neighbours = list[list[tuple[str, float]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class VectorRow:
    id: str
    image_id: str
    uri: str
    vector: Vector
    tenant: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def stored(cls, row: Mapping[str, Any]) -> VectorRow:
        """A row as ``get`` or ``scan`` return it (every field in FIELDS), to write back."""
        meta = row["metadata"] or {}
        return cls(
            id=str(row["id"]), image_id=str(row["image_id"]), uri=str(row["uri"]),
            tenant=str(row["tenant"]), vector=np.asarray(row["vector"], dtype=np.float32),
            metadata={str(k): str(v) for k, v in meta.items() if v is not None},
        )  # fmt: skip


class VectorStore(OpenCollection):
    """One Milvus collection: COSINE vectors keyed by a VARCHAR id, tenant as partition key.

    Blocking: call it from a worker thread (``asyncio.to_thread``). Calls from several
    threads at once are fine after ``open()``: the pymilvus client's gRPC channel is
    thread-safe and the only other state is an approximate count of unflushed rows;
    ``open``/``close`` must not race other calls.

    ``settings.uri`` ending in ``.db`` is a milvus-lite folder. milvus-lite serves it from
    inside this process and holds a file lock on it until the process exits (``close()``
    does not release it): one process per folder, so several consumer processes need a
    Milvus server. ``settings.index_type`` applies to servers only; milvus-lite always
    uses AUTOINDEX (brute force, or HNSW when faiss-cpu is installed).
    """

    def __init__(
        self,
        settings: MilvusSettings,
        collection: str,
        dim: int,
        *,
        timeout_s: float | None = None,
        flush_every_rows: int | None = None,
    ) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        # Every call's deadline, so that a Milvus that accepts and never answers costs a
        # batch attempt this long (the settings check counts it against max_poll_interval).
        super().__init__(
            settings, collection, settings.timeout_s if timeout_s is None else timeout_s
        )
        self.dim = dim
        self.is_lite = is_lite(settings)
        default_flush = LITE_FLUSH_EVERY_ROWS if self.is_lite else 0  # a server flushes itself
        self.flush_every_rows = default_flush if flush_every_rows is None else flush_every_rows
        self._unflushed = 0
        self._index_type = "AUTOINDEX"

    def _prepare(self, client: MilvusClient, server_version: str) -> None:
        """Create the collection if missing, check its dim and load it."""
        self._index_type = self._ensure_collection(client)
        client.load_collection(self.collection, timeout=self.timeout_s)

    def upsert(self, rows: Sequence[VectorRow]) -> None:
        """Insert or replace whole rows by id (the same id twice leaves one row)."""
        if not rows:
            return
        data = self._write([self._row_dict(row) for row in rows])
        self._unflushed += len(data)
        if self.flush_every_rows and self._unflushed >= self.flush_every_rows:
            self._unflushed = 0
            self._call("flush")

    def delete_others(self, image_ids: Sequence[str], keep_ids: Sequence[str], tenant: str) -> None:
        """Delete the rows of these images, in one tenant, whose ids are not in ``keep_ids``:
        what an image submitted again with fewer faces than before leaves behind."""
        if image_ids:
            self._call("delete", filter=others_expr(tenant, image_ids, keep_ids))

    def search(
        self,
        vectors: npt.ArrayLike,
        top_k: int,
        exclude_ids: Sequence[str | None] | None = None,
        tenant: str | None = None,
        restrict_ids: Sequence[str] | None = None,
    ) -> Neighbours:
        """Nearest neighbours of each query row as (id, cosine similarity), best first.

        One batched call for all rows. ``exclude_ids[i]`` is left out of row i's result;
        a filter expression is shared by every row of a batched call, so instead each row
        asks for one extra hit and drops its own id here. ``tenant=None`` searches every
        tenant, ``""`` only rows stored without one. ``restrict_ids`` limits candidates.
        """
        queries = self._as_matrix(vectors)
        n = queries.shape[0]
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        if exclude_ids is not None and len(exclude_ids) != n:
            raise ValueError(f"exclude_ids has {len(exclude_ids)} entries for {n} queries")
        if n == 0 or top_k == 0 or (restrict_ids is not None and not restrict_ids):
            return [[] for _ in range(n)]
        limit = top_k + (1 if exclude_ids is not None else 0)
        hits = self._call(
            "search",
            data=queries,
            limit=limit,
            filter=filter_expr(tenant, restrict_ids),
            output_fields=["id"],
            search_params={"params": self._search_params(limit)},
            consistency_level="Strong",  # rows upserted just before must be visible
        )
        excluded = exclude_ids or [None] * n
        return [
            [(str(h["id"]), float(h["distance"])) for h in row if h["id"] != skip][:top_k]
            for row, skip in zip(hits, excluded, strict=True)
        ]

    def count(self) -> int:
        """Exact number of live rows (an upserted id counts once)."""
        rows = self._call(
            "query", filter="", output_fields=["count(*)"], consistency_level="Strong"
        )
        return int(rows[0]["count(*)"])

    def get(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """Stored rows in the order of ``ids``; missing ids are skipped."""
        if not ids:
            return []
        # Not client.get(ids=...): pymilvus quotes VARCHAR keys there without escaping.
        found = self._call(
            "query",
            filter=filter_expr(None, ids),
            output_fields=FIELDS,
            consistency_level="Strong",
        )
        by_id = {str(row["id"]): {name: row.get(name) for name in FIELDS} for row in found}
        return [by_id[i] for i in ids if i in by_id]

    def scan(self, tenant: str, fields: Sequence[str]) -> list[dict[str, Any]]:
        """Every row of one tenant: one query, or a query iterator past Milvus's window."""
        expr = filter_expr(tenant, None)
        rows = self._call(
            "query", filter=expr, output_fields=list(fields), limit=QUERY_WINDOW,
            consistency_level="Strong",
        )  # fmt: skip
        if len(rows) >= QUERY_WINDOW:
            rows = self._iterate(expr, fields)
        return [{name: row.get(name) for name in fields} for row in rows]

    def _iterate(self, expr: str, fields: Sequence[str]) -> list[dict[str, Any]]:
        assert self._client is not None  # _call checked
        rows: list[dict[str, Any]] = []
        with translate_errors():
            found = self._client.query_iterator(
                self.collection, batch_size=1000, filter=expr, output_fields=list(fields),
                timeout=self.timeout_s,
            )  # fmt: skip
            try:
                while page := found.next():
                    rows.extend(page)
            finally:
                found.close()
        return rows

    def _ensure_collection(self, client: MilvusClient) -> str:
        """Create the collection and its index where missing; return the index type."""
        name, timeout = self.collection, self.timeout_s
        if not client.has_collection(name, timeout=timeout):
            try:
                client.create_collection(name, schema=self._schema(), timeout=timeout)
                log.info("created Milvus collection %s (dim %d)", name, self.dim)
            except MilvusException:
                # Another process may have created it meanwhile; anything else re-raises.
                if not client.has_collection(name, timeout=timeout):
                    raise
        fields = client.describe_collection(name, timeout=timeout)["fields"]
        dims = [int(f["params"]["dim"]) for f in fields if f["name"] == "vector"]
        if dims != [self.dim]:
            raise StoreSchemaError(
                f"Milvus collection {name!r} has dim {dims[0] if dims else '(none)'} but the "
                f"encoder produces dim {self.dim}: use another collection name for this "
                f"model, or drop {name!r} and re-index"
            )
        indexes = client.list_indexes(name, field_name="vector", timeout=timeout)
        if not indexes:
            # sync=False: pymilvus otherwise polls every 0.5 s; load_collection waits anyway.
            client.create_index(name, self._index_params(client), timeout=timeout, sync=False)
            indexes = client.list_indexes(name, field_name="vector", timeout=timeout)
        info = client.describe_index(name, indexes[0], timeout=timeout)
        return str(info.get("index_type", "AUTOINDEX")).upper()

    def _schema(self) -> Any:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_MAX_BYTES)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("image_id", DataType.VARCHAR, max_length=ID_MAX_BYTES)
        schema.add_field("uri", DataType.VARCHAR, max_length=URI_MAX_BYTES)
        schema.add_field(
            "tenant", DataType.VARCHAR, max_length=TENANT_MAX_BYTES, is_partition_key=True
        )
        schema.add_field("metadata", DataType.JSON)
        return schema

    def _index_params(self, client: MilvusClient) -> Any:
        index_type = "AUTOINDEX" if self.is_lite else self.settings.index_type.upper()
        params = client.prepare_index_params()
        params.add_index(
            "vector",
            index_name="vector",
            index_type=index_type,
            metric_type="COSINE",
            params=INDEX_BUILD_PARAMS.get(index_type, {}),
        )
        return params

    def _search_params(self, limit: int) -> dict[str, int]:
        if self._index_type.startswith("HNSW"):
            return {"ef": max(64, limit)}  # HNSW needs ef >= limit
        if self._index_type.startswith("IVF"):
            return {"nprobe": 32}
        return {}

    def _row_dict(self, row: VectorRow) -> dict[str, Any]:
        vector = np.asarray(row.vector, dtype=np.float32)
        if vector.shape != (self.dim,):
            raise ValueError(f"row {row.id!r}: vector shape {vector.shape}, expected ({self.dim},)")
        return {
            "id": row.id,
            "vector": vector,
            "image_id": row.image_id,
            "uri": row.uri,
            "tenant": row.tenant,
            "metadata": dict(row.metadata),
        }

    def _as_matrix(self, vectors: npt.ArrayLike) -> npt.NDArray[np.float32]:
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"query vectors have shape {queries.shape}, expected (n, {self.dim})")
        return queries


def stored_dim(settings: MilvusSettings, collection: str) -> int | None:
    """The vector dim of an existing collection, or None when there is no such collection."""
    timeout = settings.timeout_s  # a VectorStore's default deadline
    client = connect(settings, timeout)
    try:
        with translate_errors():
            if not client.has_collection(collection, timeout=timeout):
                return None
            fields = client.describe_collection(collection, timeout=timeout)["fields"]
    finally:
        client.close()
    dims = [int(f["params"]["dim"]) for f in fields if f["name"] == "vector"]
    return dims[0] if dims else None
