"""Writing rows by id, the same way for the vector and the text store."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from consumers.vectorstore.filters import filter_expr


def write_rows(
    call: Callable[..., Any], rows: Sequence[dict[str, Any]], misfiles: bool
) -> list[dict[str, Any]]:
    """Insert or replace ``rows`` by id through a store's ``_call``; the rows written.

    A Milvus server refuses one upsert holding the same key twice (the same image
    submitted twice in one batch): the last row of an id wins, as separate upserts
    would. Where upserts misfile rows (``upsert_misfiles``), delete and insert instead.
    """
    data = list({str(row["id"]): row for row in rows}.values())
    if misfiles:
        call("delete", filter=filter_expr(None, [str(row["id"]) for row in data]))
        call("insert", data=data)
    else:
        call("upsert", data=data)
    return data


def upsert_misfiles(server_version: str) -> bool:
    """Whether this Milvus server may file an upserted row under the wrong partition.

    Servers before 2.4 can hash an upserted row's partition key from the wrong field
    (milvus-io/milvus#30607, fixed by #30772), so a tenant filter, ``tenant == ""``
    included, misses the row; the PyPI ``milvus`` package ships such a server (2.3.5).
    There rows are deleted and inserted instead. milvus-lite reports its own version.
    """
    match = re.match(r"v(\d+)\.(\d+)\.", server_version)
    return match is not None and (int(match[1]), int(match[2])) < (2, 4)
