"""Which Milvus failures are worth a retry, and the errors the store raises."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc  # type: ignore[import-untyped]
from pymilvus import MilvusException

# Client-made "cannot connect" and the server's "service unavailable" share code 2.
_CONNECT_FAILED = 2
_TRANSIENT_GRPC = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class StoreUnavailable(Exception):
    """Milvus cannot be reached or the milvus-lite folder cannot be opened: retry later."""


class StoreRejected(Exception):
    """Milvus answered and refused this request (a row it will not store, a filter it
    will not run): retrying it unchanged will not help."""


class StoreSchemaError(RuntimeError):
    """The existing collection does not fit what this store was asked to use."""


def is_transient(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # pymilvus does `raise e from e`
        seen.add(id(current))
        code = getattr(current, "code", None)  # grpc errors: a method; Milvus errors: a value
        if isinstance(current, grpc.RpcError) and callable(code) and code() in _TRANSIENT_GRPC:
            return True
        if isinstance(current, MilvusException) and (
            current.code == _CONNECT_FAILED or current.code in _TRANSIENT_GRPC or current.retriable
        ):
            return True
        current = current.__cause__
    return False


@contextmanager
def translate_errors() -> Iterator[None]:
    """Connection trouble becomes StoreUnavailable; everything else is left as raised."""
    try:
        yield
    except (MilvusException, grpc.RpcError) as exc:
        if is_transient(exc):
            raise StoreUnavailable(f"Milvus unavailable: {exc}") from exc
        raise
