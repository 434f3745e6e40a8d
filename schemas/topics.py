"""Topic names carry a version; a deployment may add a prefix (``acme.images.v1``)."""

from __future__ import annotations

from dataclasses import dataclass

IMAGES = "images.v1"
QUERIES = "queries.v1"
RESULTS = "results.v1"
DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class Topics:
    prefix: str = ""

    def _name(self, base: str) -> str:
        return f"{self.prefix}.{base}" if self.prefix else base

    @property
    def images(self) -> str:
        return self._name(IMAGES)

    @property
    def queries(self) -> str:
        return self._name(QUERIES)

    @property
    def results(self) -> str:
        return self._name(RESULTS)

    @property
    def dlq(self) -> str:
        return self.images + DLQ_SUFFIX

    def all(self) -> list[str]:
        return [self.images, self.queries, self.results, self.dlq]
