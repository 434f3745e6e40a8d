"""The gateway's memory of recent results, per (tenant, image id), bounded, with waiters.

Fed by the gateway's own reader of ``results.v1`` (every partition, no consumer group),
so each gateway replica holds its own copy: a result is visible on every replica that
was running (or started within ``results_lookback_s``) when it was published.

A result is filed under its own ``collection``: two tenants' images of the same id are
two entries, and a lookup names its tenant ("" for none), so a key never reads another
tenant's results whatever id it asks for.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from schemas.events import TaskResult

Key = tuple[str, str]  # (tenant, image id): a tuple, so no separator can be forged


class ResultCache:
    def __init__(self, max_images: int) -> None:
        self.max_images = max_images
        self._results: OrderedDict[Key, dict[str, TaskResult]] = OrderedDict()
        self._changed: dict[Key, asyncio.Event] = {}

    def __len__(self) -> int:
        return len(self._results)

    def add(self, result: TaskResult) -> None:
        """Keeps the latest result per (tenant, image, task); the oldest images are forgotten."""
        key = (result.collection or "", result.image_id)
        by_task = self._results.setdefault(key, {})
        by_task[result.task] = result
        self._results.move_to_end(key)
        while len(self._results) > self.max_images:
            self._results.popitem(last=False)
        changed = self._changed.pop(key, None)
        if changed is not None:
            changed.set()

    def get(self, image_id: str, tenant: str = "") -> list[TaskResult]:
        return sorted(self._results.get((tenant, image_id), {}).values(), key=lambda r: r.task)

    def _answered(self, key: Key, event_id: str, tasks: set[str]) -> list[TaskResult]:
        found = self._results.get(key, {})
        done = [r for t, r in found.items() if r.source_event_id == event_id and t in tasks]
        return done if len(done) == len(tasks) else []

    async def wait(
        self, image_id: str, event_id: str, tasks: set[str], timeout_s: float, tenant: str = ""
    ) -> list[TaskResult]:
        """This event's results for every task in ``tasks``; ``TimeoutError`` otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        key = (tenant, image_id)
        while not (done := self._answered(key, event_id, tasks)):
            changed = self._changed.setdefault(key, asyncio.Event())
            await asyncio.wait_for(changed.wait(), max(0.0, deadline - loop.time()))
        return sorted(done, key=lambda r: r.task)
