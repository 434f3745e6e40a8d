"""The load test's verdicts, its JSON report, its samples as CSV, and the console summary."""

from __future__ import annotations

import csv
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from loadtest.generator import Phase
from loadtest.stats import pooled_steady, span_s, steady_throughput, summary
from schemas.events import STAGES

LATENCY_FACTOR = 3.0
SATURATION = "saturation"


def loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def verdicts(
    phases: dict[str, dict[str, Any]], bare: dict[str, Any], cpu: dict[str, Any]
) -> dict[str, Any]:
    """Efficiency (steady e2e / bare) and p99 at half saturation vs 3x one batch's service.

    ``efficiency`` is the mean of the saturation rounds' own ratios, each against the
    mean of the two bare runs beside it; ``efficiency_pooled`` puts every round's
    results over the mean of every bare run, which the machine's drift moves more.
    """
    saturation = phases.get(SATURATION) or {}
    e2e = (saturation.get("steady_state") or {}).get("images_per_s")
    rounds = _rounds(phases, saturation.get("rounds", []), bare)
    ratios = [r["efficiency"] for r in rounds if r["efficiency"] is not None]
    result: dict[str, Any] = {
        "e2e_images_per_s": e2e,
        "bare_images_per_s": bare["images_per_s"],
        "efficiency": sum(ratios) / len(ratios) if ratios else None,
        "efficiency_pooled": e2e / bare["images_per_s"] if e2e else None,
        "rounds": rounds,
    } | _noise_robust(saturation, bare, cpu.get(SATURATION, {}))
    latency = phases.get("latency")
    if latency and latency["e2e_ms"]:
        limit = LATENCY_FACTOR * bare["service_ms"]
        p99 = latency["e2e_ms"]["p99"]
        result["latency"] = {
            "p99_ms": p99,
            "limit_ms": limit,
            "service_ms": bare["service_ms"],
            "service_time": f"median bare time of one batch of {bare['batch']}, mean of the runs",
            "ratio": p99 / bare["service_ms"],
            "met": p99 <= limit,
        }
    return result


def _rounds(
    phases: dict[str, dict[str, Any]], names: list[str], bare: dict[str, Any]
) -> list[dict[str, Any]]:
    """Each round's steady e2e against the bare runs just before and just after it."""
    runs = bare["runs"]
    if len(runs) != len(names) + 1:
        raise ValueError(f"{len(names)} rounds need {len(names) + 1} bare runs, not {len(runs)}")
    table = []
    for name, before, after in zip(names, runs, runs[1:], strict=False):
        e2e = (phases[name].get("steady_state") or {}).get("images_per_s")
        local = (before["images_per_s"] + after["images_per_s"]) / 2
        table.append(
            {"round": name, "e2e_images_per_s": e2e, "bare_images_per_s": local}
            | {"efficiency": e2e / local if e2e else None}
        )
    return table


def _noise_robust(
    saturation: dict[str, Any], bare: dict[str, Any], cpu: dict[str, Any]
) -> dict[str, Any]:
    """Two ratios that other load on the machine distorts far less than wall-clock ones.

    ``cpu_efficiency``: images per consumer CPU-second (its milvus-lite child included)
    over images per CPU-second of the bare encoder. ``encoder_busy``: the share of the
    steady window the consumer's own model calls took (steady img/s x encode s / batch).
    """
    figures: dict[str, Any] = {}
    consumer_cores = (cpu.get("cores") or {}).get("consumer")
    if consumer_cores and bare.get("images_per_cpu_s") and saturation.get("wall_s"):
        per_cpu_s = saturation["results"] / (consumer_cores * saturation["wall_s"])
        figures["cpu_efficiency"] = per_cpu_s / bare["images_per_cpu_s"]
    steady = saturation.get("steady_state") or {}
    encode, size = saturation["stages_ms"]["encode"], saturation["batch_size"]
    if steady and encode and size:
        busy = steady["images_per_s"] * encode["mean"] / 1000 / size["mean"]
        figures["encoder_busy"] = busy
    return figures


def round_name(index: int) -> str:
    return f"{SATURATION}-{index}"


def is_round(phase_name: str) -> bool:
    return phase_name.startswith(f"{SATURATION}-")


def phase_figures(phases: Sequence[Phase]) -> dict[str, dict[str, Any]]:
    """Figures per phase; the saturation rounds also pooled as ``saturation``, after them."""
    figures = {}
    rounds = [phase for phase in phases if is_round(phase.name)]
    for phase in phases:
        figures[phase.name] = _figures([phase])
        if rounds and phase is rounds[-1]:
            figures[SATURATION] = _figures(rounds) | {"rounds": [r.name for r in rounds]}
    return figures


def rounds_steady(phases: Sequence[Phase]) -> dict[str, Any] | None:
    """The phases' steady states pooled: each phase's own window, summed."""
    return pooled_steady([steady_throughput(phase.samples) for phase in phases])


def _figures(phases: Sequence[Phase]) -> dict[str, Any]:
    """One phase's figures, or several phases' as one: the time between them (the bare
    runs between rounds) is in none of the windows."""
    samples = [s for phase in phases for s in phase.samples]
    span = sum(span_s(phase.samples) for phase in phases)
    return summary(samples, sum(p.count for p in phases)) | {
        "steady_state": rounds_steady(phases),
        "overall_images_per_s": len(samples) / span if span > 0 else None,
        "rate": phases[0].rate,
        "wall_s": sum(p.finished - p.started for p in phases),
        "publish_s": sum(p.published - p.started for p in phases),
    }


def write_samples(phases: Sequence[Phase], path: Path) -> Path:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["phase", "image_id", "ok", "code", "submitted", "completed", *STAGES])
        for phase in phases:
            for s in phase.samples:
                stages = [f"{s.timings.get(name, 0.0):.2f}" for name in STAGES]
                row = [phase.name, s.image_id, int(s.ok), s.code, f"{s.submitted:.6f}"]
                writer.writerow([*row, f"{s.completed:.6f}", *stages])
    return path


def write_json(report: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
    return path


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_summary(report: dict[str, Any], console: Console) -> None:
    table = Table(title="imagestream load test", show_header=True)
    for column in ("phase", "images", "errors", "img/s steady", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column, justify="right")
    for name, phase in report["phases"].items():
        steady = phase["steady_state"] or {}
        e2e = phase["e2e_ms"] or {}
        table.add_row(
            name, str(phase["results"]), str(sum(phase["errors"].values()) + phase["missing"]),
            _fmt(steady.get("images_per_s")), _fmt(e2e.get("p50"), 0),
            _fmt(e2e.get("p95"), 0), _fmt(e2e.get("p99"), 0),
        )  # fmt: skip
    console.print(table)
    bare, verdict = report["bare"], report["verdicts"]
    console.print(
        f"bare encoder: {bare['images_per_s']:.1f} img/s ({bare['model']}, batch {bare['batch']}, "
        f"{bare['device']}), one batch {bare['service_ms']:.0f} ms (mean of "
        f"{len(bare['runs'])} runs around the rounds; drift {bare['drift']:+.1%}, spread "
        f"{bare['spread']:.1%})"
    )
    rounds = ", ".join(_fmt(r["efficiency"], 3) for r in verdict["rounds"])
    console.print(
        f"efficiency {_fmt(verdict['efficiency'], 3)} (mean of the rounds' {rounds}: steady "
        f"e2e / the bare runs beside each); pooled {_fmt(verdict['efficiency_pooled'], 3)}; "
        f"noise-robust: cpu_efficiency {_fmt(verdict.get('cpu_efficiency'), 3)}, "
        f"encoder_busy {_fmt(verdict.get('encoder_busy'), 3)}"
    )
    latency = verdict.get("latency")
    if latency:
        rate = report["phases"]["latency"]["rate"]
        console.print(
            f"latency at {rate:.1f}/s: p99 {latency['p99_ms']:.0f} ms"
            f" vs {LATENCY_FACTOR:.0f} x service {latency['limit_ms']:.0f} ms: "
            + ("met" if latency["met"] else "NOT met")
        )
    for name, run in (report.get("legacy") or {}).items():
        if isinstance(run, dict) and "images_per_s" in run:
            console.print(f"legacy loop {name}: {run['images_per_s']:.2f} img/s")
    console.print(f"report: {report['files']['report']}")
