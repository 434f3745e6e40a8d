"""How results look on a terminal."""

from __future__ import annotations

from schemas.events import Neighbor, TaskResult


def format_result(result: TaskResult) -> str:
    head = f"{result.image_id:<18} {result.task:<7} {result.status.value:<5}"
    if result.error is not None:
        return f"{head} {result.error.code.value}: {result.error.message}"
    done = f"{head} model={result.model} total={result.timings.total:.0f}ms"
    if result.faces is not None:
        faces = "; ".join(
            f"{f.face_id} [{f.person_id or 'no person yet'}] -> {_near(f.neighbors)}"
            for f in result.faces
        )
        return f"{done}  faces: {faces or '(no face)'}"
    if result.ocr is not None or result.caption is not None:
        return f"{done}  {_text(result)}"
    if result.labels is not None:
        return f"{done}  labels: " + ", ".join(f"{x.label} {x.score:.2f}" for x in result.labels)
    if result.classes is not None:
        found = ", ".join(f"{c.head}={c.label} {c.proba:.2f}" for c in result.classes)
        return f"{done}  classes: {found or '(no heads)'}"
    return f"{done}  neighbours: {_near(result.neighbors)}"


def _text(result: TaskResult) -> str:
    if result.ocr is None:
        return f"caption: {result.caption!r}"
    text = " / ".join(line.text for line in result.ocr.lines)
    return f"ocr: {text!r}" if text else "ocr: (no text)"


def _near(neighbors: list[Neighbor]) -> str:
    return ", ".join(f"{n.id} {n.score:.3f}{_lists(n)}" for n in neighbors) or "(none yet)"


def _lists(hit: Neighbor) -> str:
    return f" ({'+'.join(hit.lists)})" if hit.lists else ""


def print_result(result: TaskResult) -> None:
    print(format_result(result), flush=True)
