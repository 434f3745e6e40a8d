"""The gateway's memory of recent results, per image id, bounded, with waiters.

Fed by the gateway's own reader of ``results.v1`` (every partition, no consumer group),
so each gateway replica holds its own copy: a result is visible on every replica that
was running (or started within ``results_lookback_s``) when it was published.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from schemas.events import TaskResult


class ResultCache:
    def __init__(self, max_images: int) -> None:
        self.max_images = max_images
        self._results: OrderedDict[str, dict[str, TaskResult]] = OrderedDict()
        self._changed: dict[str, asyncio.Event] = {}

    def __len__(self) -> int:
        return len(self._results)

    def add(self, result: TaskResult) -> None:
        """Keeps the latest result per (image, task); the oldest images are forgotten."""
        by_task = self._results.setdefault(result.image_id, {})
        by_task[result.task] = result
        self._results.move_to_end(result.image_id)
        while len(self._results) > self.max_images:
            self._results.popitem(last=False)
        changed = self._changed.pop(result.image_id, None)
        if changed is not None:
            changed.set()

    def get(self, image_id: str) -> list[TaskResult]:
        return sorted(self._results.get(image_id, {}).values(), key=lambda r: r.task)

    def _answered(self, image_id: str, event_id: str, tasks: set[str]) -> list[TaskResult]:
        found = self._results.get(image_id, {})
        done = [r for t, r in found.items() if r.source_event_id == event_id and t in tasks]
        return done if len(done) == len(tasks) else []

    async def wait(
        self, image_id: str, event_id: str, tasks: set[str], timeout_s: float
    ) -> list[TaskResult]:
        """This event's results for every task in ``tasks``; ``TimeoutError`` otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not (done := self._answered(image_id, event_id, tasks)):
            changed = self._changed.setdefault(image_id, asyncio.Event())
            await asyncio.wait_for(changed.wait(), max(0.0, deadline - loop.time()))
        return sorted(done, key=lambda r: r.task)
