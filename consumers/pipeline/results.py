"""Building ``TaskResult`` events: one per (event, task), ids deterministic."""

from __future__ import annotations

from datetime import datetime
from time import perf_counter
from typing import Any

from consumers.pipeline.item_errors import ItemError
from schemas.events import (
    Reply,
    Status,
    TaskError,
    TaskResult,
    Timings,
    result_id,
)


class Stopwatch:
    """Per-item stage timings in milliseconds; ``total`` runs from the batch's start."""

    def __init__(self, started: float | None = None) -> None:
        self.started = perf_counter() if started is None else started
        self.stages: dict[str, float] = {}

    def add(self, stage: str, millis: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + millis

    def timings(self) -> Timings:
        total = (perf_counter() - self.started) * 1000
        return Timings(**self.stages, total=total)


def since(start: float) -> float:
    return (perf_counter() - start) * 1000


def ok_result(
    task: str,
    event_id: str,
    image_id: str,
    *,
    model: str,
    dim: int,
    watch: Stopwatch,
    reply: Reply | None = None,
    submitted_at: datetime | None = None,
    **fields: Any,
) -> TaskResult:
    """``fields`` are the task's own: neighbors, faces, labels, caption, truncated."""
    return _result(
        task, event_id, image_id, Status.OK, watch, reply, submitted_at,
        model=model, dim=dim, **fields,
    )  # fmt: skip


def error_result(
    task: str,
    event_id: str,
    image_id: str,
    error: ItemError,
    *,
    model: str | None,
    watch: Stopwatch,
    reply: Reply | None = None,
    submitted_at: datetime | None = None,
    collection: str | None = None,
) -> TaskResult:
    failed = TaskError(code=error.code, message=error.message)
    return _result(
        task, event_id, image_id, Status.ERROR, watch, reply, submitted_at,
        collection=collection, error=failed, model=model,
    )  # fmt: skip


def _result(
    task: str,
    event_id: str,
    image_id: str,
    status: Status,
    watch: Stopwatch,
    reply: Reply | None,
    submitted_at: datetime | None,
    **fields: Any,
) -> TaskResult:
    """What every result carries: its deterministic id, where it came from, its timings."""
    return TaskResult(
        result_id=result_id(event_id, task),
        source_event_id=event_id,
        image_id=image_id,
        task=task,
        status=status,
        timings=watch.timings(),
        reply=reply,
        submitted_at=submitted_at,
        **fields,
    )
