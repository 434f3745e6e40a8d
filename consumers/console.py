"""How results look on a terminal."""

from __future__ import annotations

from schemas.events import TaskResult


def format_result(result: TaskResult) -> str:
    head = f"{result.image_id:<18} {result.task:<7} {result.status.value:<5}"
    if result.error is not None:
        return f"{head} {result.error.code.value}: {result.error.message}"
    near = ", ".join(f"{n.id} {n.score:.3f}" for n in result.neighbors) or "(none yet)"
    return f"{head} model={result.model} total={result.timings.total:.0f}ms  neighbours: {near}"


def print_result(result: TaskResult) -> None:
    print(format_result(result), flush=True)
