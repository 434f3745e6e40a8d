"""The Milvus collections one consumer process opens, each once, and closes at shutdown."""

from __future__ import annotations

from concurrent.futures import Executor

from consumers.config.settings import MilvusSettings
from consumers.ops.threads import run_in
from consumers.vectorstore.store import VectorStore
from consumers.vectorstore.text_store import TextStore


class Stores:
    """Opens stores in ``pool``, the store thread every call on them uses. A text
    collection is shared: the caption or OCR task writes the one text search reads."""

    def __init__(self, milvus: MilvusSettings, pool: Executor) -> None:
        self.milvus = milvus
        self.pool = pool
        self._opened: list[VectorStore | TextStore] = []
        self._texts: dict[str, TextStore] = {}

    async def vectors(self, collection: str, dim: int) -> VectorStore:
        store = VectorStore(self.milvus, collection, dim)
        await self._open(store)
        return store

    async def texts(self, collection: str) -> TextStore:
        if collection not in self._texts:
            store = TextStore(self.milvus, collection)
            await self._open(store)
            self._texts[collection] = store
        return self._texts[collection]

    async def _open(self, store: VectorStore | TextStore) -> None:
        await run_in(self.pool, store.open)
        self._opened.append(store)

    def close(self) -> None:
        for store in self._opened:
            store.close()
        self._opened.clear()
        self._texts.clear()
