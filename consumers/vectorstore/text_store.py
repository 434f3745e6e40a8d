"""Milvus access for one text space (OCR text, captions): upsert texts, rank them by BM25.

Where the Milvus in use has full-text search (milvus-lite 2.5+/3.x, a Milvus server 2.5+),
the collection holds the text in an analysed VARCHAR field, Milvus's BM25 function turns
it into a sparse vector, and a query is one ``search`` with the query's words against a
``SPARSE_INVERTED_INDEX`` (metric ``BM25``). Older servers (the PyPI ``milvus`` package
ships 2.3.5) have neither: there the rows carry a 2-d placeholder vector (a collection
needs one), and a query reads the candidate texts (tenant and id filters applied by
Milvus) and ranks them with ``bm25s`` here. Scores are BM25 either way (higher = better).

Keys and tenants are the vector stores' (``tenant/image_id``, tenant = partition key).
Blocking, like ``VectorStore``: call it from a worker thread.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymilvus import DataType, Function, FunctionType, MilvusClient, MilvusException

from consumers.config.settings import MilvusSettings
from consumers.vectorstore.connection import OpenCollection
from consumers.vectorstore.filters import filter_expr
from consumers.vectorstore.milvus_errors import StoreSchemaError
from consumers.vectorstore.store import ID_MAX_BYTES, TENANT_MAX_BYTES, URI_MAX_BYTES

log = logging.getLogger(__name__)

TEXT_MAX_BYTES = 65_535  # Milvus's VARCHAR limit; longer texts are cut (at a character)
FIELDS = ["id", "image_id", "uri", "tenant", "text", "detail", "metadata"]
# Without Milvus's BM25: at most this many candidate texts are ranked per query.
FALLBACK_CANDIDATES = 16_384
_PLACEHOLDER = [1.0, 0.0]
Ranked = list[list[tuple[str, float]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class TextRow:
    id: str
    image_id: str
    uri: str
    text: str
    tenant: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)  # e.g. OCR lines with boxes
    metadata: Mapping[str, str] = field(default_factory=dict)


def has_full_text_search(server_version: str) -> bool:
    """Milvus 2.5 added BM25 functions; milvus-lite reports its own version (2.5+ has it)."""
    match = re.search(r"(\d+)\.(\d+)\.", server_version)
    return match is not None and (int(match[1]), int(match[2])) >= (2, 5)


def clip_text(text: str) -> str:
    data = text.encode("utf-8", "replace")
    return text if len(data) <= TEXT_MAX_BYTES else data[:TEXT_MAX_BYTES].decode(errors="ignore")


class TextStore(OpenCollection):
    def __init__(
        self,
        settings: MilvusSettings,
        collection: str,
        *,
        timeout_s: float = 30.0,
        native_bm25: bool | None = None,
    ) -> None:
        super().__init__(settings, collection, timeout_s)
        # None = decide from the server's version; False forces the bm25s path (tests).
        self.native_bm25 = native_bm25

    def _prepare(self, client: MilvusClient, server_version: str) -> None:
        if self.native_bm25 is None:
            self.native_bm25 = has_full_text_search(server_version)
        self._ensure_collection(client)
        client.load_collection(self.collection, timeout=self.timeout_s)

    def upsert(self, rows: Sequence[TextRow]) -> None:
        if not rows:
            return
        self._write([self._row_dict(row) for row in rows])

    def get(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """Stored rows in the order of ``ids``; missing ids are skipped."""
        if not ids:
            return []
        found = self._call(
            "query", filter=filter_expr(None, ids), output_fields=FIELDS, consistency_level="Strong"
        )
        by_id = {str(row["id"]): {name: row.get(name) for name in FIELDS} for row in found}
        return [by_id[i] for i in ids if i in by_id]

    def search(
        self,
        texts: Sequence[str],
        top_k: int,
        tenant: str | None = None,
        restrict_ids: Sequence[str] | None = None,
    ) -> Ranked:
        """Each text's best-matching rows as (id, BM25 score), best first; rows sharing no
        word with the text are not returned."""
        if not texts or top_k <= 0 or (restrict_ids is not None and not restrict_ids):
            return [[] for _ in texts]
        expr = filter_expr(tenant, restrict_ids)
        if not self.native_bm25:
            return self._rank_here(texts, top_k, expr)
        hits = self._call(
            "search",
            data=list(texts),
            anns_field="sparse",
            limit=top_k,
            filter=expr,
            output_fields=["id"],
            consistency_level="Strong",
        )
        # milvus-lite reports BM25 negated (smaller = better), a server as it is.
        return [[(str(h["id"]), abs(float(h["distance"]))) for h in row] for row in hits]

    def _rank_here(self, texts: Sequence[str], top_k: int, expr: str) -> Ranked:
        import bm25s

        rows = self._call(
            "query",
            filter=expr,
            output_fields=["id", "text"],
            limit=FALLBACK_CANDIDATES,
            consistency_level="Strong",
        )
        rows = [row for row in rows if str(row["text"]).strip()]
        if not rows:
            return [[] for _ in texts]
        retriever = bm25s.BM25()
        retriever.index(
            bm25s.tokenize([str(r["text"]) for r in rows], show_progress=False), show_progress=False
        )
        ranked: Ranked = []
        for text in texts:
            scores = retriever.get_scores(
                bm25s.tokenize(text, return_ids=False, show_progress=False)[0]
            )
            order = sorted(range(len(rows)), key=lambda i: -scores[i])[:top_k]
            ranked.append([(str(rows[i]["id"]), float(scores[i])) for i in order if scores[i] > 0])
        return ranked

    def _ensure_collection(self, client: MilvusClient) -> None:
        name, timeout = self.collection, self.timeout_s
        if not client.has_collection(name, timeout=timeout):
            try:
                client.create_collection(name, schema=self._schema(), timeout=timeout)
                log.info(
                    "created Milvus text collection %s (BM25 in Milvus: %s)", name, self.native_bm25
                )
            except MilvusException:
                if not client.has_collection(name, timeout=timeout):
                    raise
        fields = {f["name"] for f in client.describe_collection(name, timeout=timeout)["fields"]}
        wanted = "sparse" if self.native_bm25 else "vector"
        if "text" not in fields or wanted not in fields:
            raise StoreSchemaError(
                f"Milvus collection {name!r} is not a text collection of this kind (fields "
                f"{sorted(fields)}, BM25 in Milvus: {self.native_bm25}): drop it or use another"
            )
        # The index apart, as the vector store does (also where a crash left none):
        # create_collection with index_params makes pymilvus call AllocTimestamp, which
        # milvus-lite logs as unimplemented.
        if not client.list_indexes(name, timeout=timeout):
            client.create_index(name, self._index(client), timeout=timeout, sync=False)

    def _schema(self) -> Any:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_MAX_BYTES)
        schema.add_field("image_id", DataType.VARCHAR, max_length=ID_MAX_BYTES)
        schema.add_field("uri", DataType.VARCHAR, max_length=URI_MAX_BYTES)
        schema.add_field(
            "tenant", DataType.VARCHAR, max_length=TENANT_MAX_BYTES, is_partition_key=True
        )
        schema.add_field(
            "text", DataType.VARCHAR, max_length=TEXT_MAX_BYTES, enable_analyzer=self.native_bm25
        )
        schema.add_field("detail", DataType.JSON)
        schema.add_field("metadata", DataType.JSON)
        if self.native_bm25:
            schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            schema.add_function(
                Function(
                    name="text_bm25",
                    function_type=FunctionType.BM25,
                    input_field_names=["text"],
                    output_field_names=["sparse"],
                )
            )
        else:
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=len(_PLACEHOLDER))
        return schema

    def _index(self, client: MilvusClient) -> Any:
        params = client.prepare_index_params()
        if self.native_bm25:
            params.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        else:
            params.add_index("vector", index_type="FLAT", metric_type="L2")
        return params

    def _row_dict(self, row: TextRow) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": row.id,
            "image_id": row.image_id,
            "uri": row.uri,
            "tenant": row.tenant,
            "text": clip_text(row.text),
            "detail": dict(row.detail),
            "metadata": dict(row.metadata),
        }
        if not self.native_bm25:
            data["vector"] = _PLACEHOLDER
        return data
