"""One Milvus collection held open: the connection rules (milvus-lite paths and its lock
message) and the open/close lifecycle that the vector store and the text store share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from pymilvus import MilvusClient
from pymilvus.exceptions import ConnectionConfigException, MilvusException

from consumers.config.settings import MilvusSettings
from consumers.vectorstore.milvus_errors import (
    StoreRejected,
    StoreUnavailable,
    is_transient,
    translate_errors,
)
from consumers.vectorstore.writes import upsert_misfiles, write_rows

SERVER_PREFIXES = ("http://", "https://", "tcp://", "unix:")


def is_lite(settings: MilvusSettings) -> bool:
    """Whether ``settings.uri`` names a milvus-lite file rather than a server."""
    return not settings.uri.startswith(SERVER_PREFIXES)


def connect(settings: MilvusSettings, timeout_s: float) -> MilvusClient:
    uri = settings.uri
    lite = is_lite(settings)
    if lite:
        if not uri.endswith(".db"):
            raise ValueError(f"a milvus-lite path must end in .db, got {uri!r}")
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    token = settings.token.get_secret_value() if settings.token else ""
    try:
        with translate_errors():
            return MilvusClient(uri=uri, token=token, timeout=timeout_s)
    except ConnectionConfigException as exc:
        if not lite:
            raise
        # pymilvus hides milvus-lite's reason; a lock held by another process is the usual one.
        raise StoreUnavailable(
            f"cannot open milvus-lite at {uri!r}: is another process using it? milvus-lite "
            "is one process per folder; use a Milvus server for several processes"
        ) from exc


class OpenCollection(ABC):
    """``with Store(...) as store:`` or ``open()``/``close()``: connect, then ``_prepare``
    the collection (create, check, load); a failed prepare closes the client again."""

    def __init__(self, settings: MilvusSettings, collection: str, timeout_s: float) -> None:
        self.settings = settings
        self.collection = collection
        self.timeout_s = timeout_s
        self._client: MilvusClient | None = None
        self.upsert_misfiles_rows = False  # servers before 2.4: see writes.upsert_misfiles

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        if self._client is not None:
            return
        client = connect(self.settings, self.timeout_s)
        try:
            with translate_errors():
                version = client.get_server_version()
                self.upsert_misfiles_rows = upsert_misfiles(version)
                self._prepare(client, version)
        except BaseException:
            client.close()
            raise
        self._client = client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @abstractmethod
    def _prepare(self, client: MilvusClient, server_version: str) -> None:
        """Create the collection where missing, check it and load it."""

    def _write(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Insert or replace ``rows`` by id, as this server needs (``writes.write_rows``)."""
        return write_rows(self._call, rows, self.upsert_misfiles_rows)

    def _call(self, method: str, **kwargs: Any) -> Any:
        """``client.<method>(collection, ...)`` within the deadline. Unreachable or
        overloaded: ``StoreUnavailable`` (retried); refused: ``StoreRejected`` (an
        item's error, not a retry)."""
        if self._client is None:
            kind = type(self).__name__
            raise RuntimeError(f"{kind} is not open: call open() or use it as a context")
        call = getattr(self._client, method)
        with translate_errors():
            try:
                return call(self.collection, timeout=self.timeout_s, **kwargs)
            except MilvusException as exc:
                if is_transient(exc):
                    raise  # translate_errors makes it StoreUnavailable
                raise StoreRejected(f"Milvus refused {method}: {exc}") from exc
