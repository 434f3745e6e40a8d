"""PNG plots of a load test: throughput and latency over time, latency histograms.

matplotlib with the Agg backend (no display needed); small figures at a low dpi keep
each file well under 200 KB so they can be committed with the docs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.generator import Phase
from loadtest.report import SATURATION, is_round

DPI = 80
COLOURS = {"saturation": "tab:blue", "latency": "tab:orange", "warmup": "tab:grey"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colour(phase: Phase) -> str | None:
    """The saturation rounds (saturation-1, saturation-2, ...) share one colour."""
    return COLOURS.get(SATURATION if is_round(phase.name) else phase.name)


def _window_s(span_s: float, done: np.ndarray) -> float:
    """A sliding window at least four micro-batches wide (and a twentieth of the run, and
    5 s), so that batch-at-a-time completions read as a rate rather than as spikes."""
    gaps = np.diff(np.sort(done))
    batch_gap = float(np.median(gaps[gaps > 0.05])) if np.any(gaps > 0.05) else 0.0
    return max(5.0, span_s / 20, 4 * batch_gap)


def _rate(done: np.ndarray, window: float) -> tuple[np.ndarray, np.ndarray]:
    """Completions per second over the trailing ``window``, on a grid of window/4."""
    grid = np.arange(done.min(), done.max() + window / 4, window / 4)
    counts = np.searchsorted(done, grid, side="right") - np.searchsorted(done, grid - window)
    return grid, counts / window


def throughput_and_latency(
    phases: Sequence[Phase], t0: float, path: Path, bare_runs: Sequence[dict[str, Any]] = ()
) -> Path:
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    for index, run in enumerate(bare_runs):
        label = "bare encoder (consumers frozen)" if index == 0 else None
        top.axvspan(run["started"] - t0, run["finished"] - t0, color="0.88", label=label)
    span = max((p.finished for p in phases), default=t0 + 1) - t0
    everything = np.array([s.completed - t0 for p in phases for s in p.samples])
    window = _window_s(span, everything) if everything.size else 5.0
    for phase in phases:
        done = np.sort(np.array([s.completed - t0 for s in phase.samples]))
        if done.size == 0:
            continue
        colour = _colour(phase)
        top.plot(*_rate(done, window), color=colour, label=phase.name)
        e2e = np.array([s.e2e_ms for s in phase.samples]) / 1000
        bottom.scatter(done, e2e, s=4, color=colour, label=phase.name)
    top.set_ylabel("results / s")
    top.set_title(f"throughput (trailing {window:.0f} s window) and end-to-end latency")
    top.legend(loc="upper right", fontsize="small")
    bottom.set_ylabel("e2e latency (s)")
    bottom.set_xlabel("seconds since the first phase or bare run started")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def latency_histograms(phases: Sequence[Phase], path: Path) -> Path:
    plt = _pyplot()
    shown = [p for p in phases if p.samples]
    fig, axes = plt.subplots(1, max(1, len(shown)), figsize=(4 * max(1, len(shown)), 3.2))
    for ax, phase in zip(np.atleast_1d(axes), shown, strict=False):
        e2e = np.array([s.e2e_ms for s in phase.samples])
        ax.hist(e2e, bins=40, color=_colour(phase))
        p99 = float(np.percentile(e2e, 99))
        ax.axvline(p99, color="black", linestyle="--", linewidth=1, label=f"p99 {p99:.0f} ms")
        rate = f"{phase.rate:.1f}/s" if phase.rate else "all at once"
        ax.set_title(f"{phase.name} ({rate})", fontsize="medium")
        ax.set_xlabel("e2e latency (ms)")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def write_plots(
    phases: Sequence[Phase], out: Path, bare_runs: Sequence[dict[str, Any]] = ()
) -> list[Path]:
    measured = [p for p in phases if p.name != "warmup"]
    t0 = min([p.started for p in measured] + [r["started"] for r in bare_runs], default=0.0)
    # One histogram for all the saturation rounds: they are one load, split for the bare runs.
    rounds = [p for p in measured if is_round(p.name)]
    pooled = Phase(SATURATION, sum(p.count for p in rounds), rounds[0].rate) if rounds else None
    if pooled is not None:
        pooled.samples = [s for p in rounds for s in p.samples]
    others = [p for p in measured if not is_round(p.name)]
    histograms = ([pooled] if pooled else []) + others
    return [
        throughput_and_latency(measured, t0, out / "throughput_latency.png", bare_runs),
        latency_histograms(histograms, out / "latency_histogram.png"),
    ]
