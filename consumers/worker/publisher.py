"""What a consumer publishes for a delivered batch: results, person changes, dead letters.

Every send of a batch is awaited (acks=all, ``consumers/worker/kafka.py``) before the
batch's offsets are committed (``consumers/worker/delivery.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from faststream.kafka import KafkaRouter

from consumers.ops.metrics import record_dlq
from consumers.pipeline.batch import ImagePipeline
from consumers.worker.delivery import Delivered, Publish
from consumers.worker.dlq import dead_letter
from consumers.worker.fit import publish_result
from schemas.events import TaskResult, dump
from schemas.people import PersonChanged, person_key
from schemas.topics import Topics

_JSON = {"content-type": "application/json"}


class ResultPublisher:
    """The results, people and DLQ publishers, declared on ``router``."""

    def __init__(self, router: KafkaRouter, topics: Topics, *, dlq: bool) -> None:
        self.dlq_enabled = dlq
        self.results = router.publisher(
            topics.results,
            schema=TaskResult,
            title="results",
            description="One TaskResult per (image, task); key = image id.",
        )
        self.dlq = router.publisher(
            topics.dlq,
            title="dlq",
            description="Bad input: the original key, bytes and headers + imagestream.dlq.* "
            "headers (see consumers/worker/dlq.py).",
        )
        self.people = router.publisher(
            topics.people,
            schema=PersonChanged,
            title="people",
            description="How the face task groups faces into persons; key = [tenant/]person id.",
        )

    def for_task(self, pipeline: ImagePipeline) -> Publish:
        """An image task's publish step: with the person changes its task derives from
        the results (the face task's), sent before the batch is committed."""

        async def publish(task: str, delivered: list[Delivered]) -> None:
            changes = pipeline.task.people_events([d.result for d in delivered])
            await self.publish(task, delivered, changes)

        return publish

    async def results_only(self, task: str, delivered: list[Delivered]) -> None:
        """Results alone (text search: a query is never dead-lettered)."""
        await _all([publish_result(self.results, d.result) for d in delivered])

    async def publish(
        self, task: str, delivered: list[Delivered], changes: Sequence[PersonChanged] = ()
    ) -> None:
        """Every result, the person changes they caused, and a DLQ record for bad input;
        returns once Kafka acked all."""
        sends = [publish_result(self.results, d.result) for d in delivered]
        sends += [
            self.people.publish(dump(c), key=person_key(c.tenant, c.person_id), headers=_JSON)
            for c in changes
        ]
        letters = [letter for d in delivered if (letter := dead_letter(d)) is not None]
        if self.dlq_enabled:
            sends += [self.dlq.publish(x.value, key=x.key, headers=x.headers) for x in letters]
        await _all(sends)
        if self.dlq_enabled:
            for letter in letters:
                record_dlq(task, letter.headers["imagestream.dlq.code"])


async def _all(sends: Sequence[Awaitable[Any]]) -> None:
    # All sends finish (acked or failed) before a failure is raised for the replay.
    for outcome in await asyncio.gather(*sends, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome
