"""Figures from collected results: percentiles, steady-state throughput, stage breakdown.

All times are wall-clock seconds since the epoch. ``submitted`` is stamped by the load
generator, ``completed`` by the consumer; both run on one machine, so one clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.events import STAGES, TaskResult

# The results of one micro-batch share one completed_at (consumers/pipeline/batch.py stamps it
# once per batch); batches are delivered one after another, at least one model call
# apart. (Their starts can be milliseconds apart: the next batch is prefetched.)
BATCH_GAP_S = 0.005


@dataclass(frozen=True)
class Sample:
    image_id: str
    ok: bool
    code: str
    submitted: float
    completed: float
    received: float
    timings: dict[str, float]

    @property
    def e2e_ms(self) -> float:
        return (self.completed - self.submitted) * 1000


def sample(result: TaskResult, received: float) -> Sample:
    submitted = result.submitted_at.timestamp() if result.submitted_at else float("nan")
    return Sample(
        image_id=result.image_id,
        ok=result.status.value == "ok",
        code=result.error.code.value if result.error else "",
        submitted=submitted,
        completed=result.completed_at.timestamp(),
        received=received,
        timings=result.timings.model_dump(),
    )


def percentiles(values: Iterable[float]) -> dict[str, float]:
    data = np.asarray(list(values), dtype=np.float64)
    if data.size == 0:
        return {}
    p50, p95, p99 = np.percentile(data, [50, 95, 99])
    return {
        "mean": float(data.mean()),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(data.max()),
        "count": int(data.size),
    }


def batches(samples: Sequence[Sample], gap_s: float = BATCH_GAP_S) -> list[list[Sample]]:
    """Results grouped by the micro-batch they came from, in batch order."""
    ordered = sorted(samples, key=lambda s: s.completed)
    groups: list[list[Sample]] = []
    for item in ordered:
        if groups and item.completed - groups[-1][-1].completed <= gap_s:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def steady_throughput(samples: Sequence[Sample]) -> dict[str, Any] | None:
    """Images/s from the completion of the first micro-batch to that of the last but one.

    Excludes pipeline fill (group join, first fetch, first model call) and drain: the
    last batch's model call has no next batch's fetch and decode beside it, so it runs
    faster than the rest (1.56-1.59 s against 1.7 s measured here) and would flatter the
    rate. Needs three batches.
    """
    groups = batches(samples)
    if len(groups) < 3:
        return None
    start, end = groups[0][-1].completed, groups[-2][-1].completed
    counted = sum(len(group) for group in groups[1:-1])
    window = end - start
    if window <= 0:
        return None
    return {
        "images_per_s": counted / window,
        "window_s": window,
        "counted": counted,
        "excluded_first_batch": len(groups[0]),
        "excluded_last_batch": len(groups[-1]),
        "method": "results of the micro-batches between the first and the last / (last but "
        "one batch's completion - first batch's completion)",
    }


def pooled_steady(windows: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Several phases' steady states as one: their results over their windows, summed."""
    if not windows or any(w is None for w in windows):
        return None
    present = [w for w in windows if w is not None]
    if len(present) == 1:
        return present[0]
    counted, window = sum(w["counted"] for w in present), sum(w["window_s"] for w in present)
    return {
        "images_per_s": counted / window,
        "window_s": window,
        "counted": counted,
        "excluded_first_batch": sum(w["excluded_first_batch"] for w in present),
        "excluded_last_batch": sum(w["excluded_last_batch"] for w in present),
        "method": "each phase's steady window (" + present[0]["method"] + "), summed",
    }


def span_s(samples: Sequence[Sample]) -> float:
    """Seconds from the first submission to the last completion (0 without samples)."""
    if not samples:
        return 0.0
    return max(s.completed for s in samples) - min(s.submitted for s in samples)


def stage_breakdown(samples: Sequence[Sample]) -> dict[str, dict[str, float]]:
    """Per-item ms per stage (a batched stage counts fully for every item of its batch),
    plus ``queue``: submitted until the batch started (e2e minus the consumer's total)."""
    table = {stage: percentiles(s.timings.get(stage, 0.0) for s in samples) for stage in STAGES}
    table["queue"] = percentiles(s.e2e_ms - s.timings.get("total", 0.0) for s in samples)
    return table


def batch_sizes(samples: Sequence[Sample]) -> dict[str, float]:
    return percentiles(len(group) for group in batches(samples))


def errors(samples: Sequence[Sample]) -> dict[str, int]:
    return dict(Counter(s.code for s in samples if not s.ok))


def summary(samples: Sequence[Sample], expected: int) -> dict[str, Any]:
    """The figures that pool across phases by pooling their samples (throughput does
    not: ``report`` adds it per phase)."""
    return {
        "results": len(samples),
        "expected": expected,
        "missing": expected - len(samples),
        "errors": errors(samples),
        "e2e_ms": percentiles(s.e2e_ms for s in samples),
        "stages_ms": stage_breakdown(samples),
        "batch_size": batch_sizes(samples),
    }
