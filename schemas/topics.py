"""Topic names carry a version; a deployment may add a prefix (``acme.images.v1``)."""

from __future__ import annotations

from dataclasses import dataclass

IMAGES = "images.v1"
QUERIES = "queries.v1"
RESULTS = "results.v1"
DLQ_SUFFIX = ".dlq"
RPC = "rpc.v1"
PEOPLE = "people.v1"
RPC_REPLIES = "rpc.replies.v1"
CALLBACKS_FAILED_SUFFIX = ".callbacks.failed"


@dataclass(frozen=True)
class Topics:
    prefix: str = ""

    def _name(self, base: str) -> str:
        return f"{self.prefix}.{base}" if self.prefix else base

    def group(self, name: str) -> str:
        """A default consumer group, prefixed like the topics: deployments that share a
        Kafka cluster under different prefixes never share, or rebalance, a group."""
        return self._name(name)

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

    @property
    def rpc(self) -> str:
        """Gateway requests to the encoders (request/reply)."""
        return self._name(RPC)

    @property
    def rpc_replies(self) -> str:
        return self._name(RPC_REPLIES)

    @property
    def people(self) -> str:
        """How faces are grouped into persons changes (schemas/people.py)."""
        return self._name(PEOPLE)

    @property
    def callbacks_failed(self) -> str:
        """Legacy callbacks that failed after every retry."""
        return self.results + CALLBACKS_FAILED_SUFFIX

    def all(self) -> list[str]:
        return [
            self.images,
            self.queries,
            self.results,
            self.dlq,
            self.rpc,
            self.rpc_replies,
            self.callbacks_failed,
            self.people,
        ]
