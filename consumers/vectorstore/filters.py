"""Milvus filter expressions built from untrusted strings (tenants, ids)."""

from __future__ import annotations

from collections.abc import Sequence

# Only the escapes both parsers accept (Go strconv.Unquote on a server, milvus-lite's lexer).
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def literal(value: str) -> str:
    """A double-quoted Milvus string literal that cannot end early or inject an operator.

    milvus-lite 3.2 rejects pymilvus filter templates (``filter_params``), so values are
    escaped here instead, which also works on every server version.
    """
    if any(ord(ch) < 0x20 and ch not in "\t\n\r" for ch in value):
        raise ValueError(f"control character in filter value {value!r}")
    return '"' + value.translate(_ESCAPES) + '"'


def literals(values: Sequence[str]) -> str:
    """A Milvus list of string literals, for ``in`` and ``not in``."""
    return "[" + ", ".join(map(literal, values)) + "]"


def filter_expr(tenant: str | None, restrict_ids: Sequence[str] | None) -> str:
    clauses = []
    if tenant is not None:
        clauses.append(f"tenant == {literal(tenant)}")
    if restrict_ids is not None:
        clauses.append(f"id in {literals(restrict_ids)}")
    return " and ".join(clauses)


def others_expr(tenant: str, image_ids: Sequence[str], keep_ids: Sequence[str]) -> str:
    """The rows of these images, in one tenant, whose ids are not in ``keep_ids``."""
    clauses = [filter_expr(tenant, None), f"image_id in {literals(image_ids)}"]
    if keep_ids:
        clauses.append(f"id not in {literals(keep_ids)}")
    return " and ".join(clauses)
