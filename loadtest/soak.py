"""``imagestream loadtest --soak N``: N events through the consumers, their memory sampled.

The embedded stack and the consumer processes start as for the load test (no bare or
legacy baselines). A warm-up batch per consumer, then N events at once (or at
``--rate``), the ``--images`` uploaded objects submitted again and again round-robin
under one image id each, so that the collection stops growing once each was seen.
Meanwhile each consumer's resident set (``VmRSS``) is read from /proc every
``SAMPLE_EVERY_S``, its own and with its children, beside the count of results received
so far (and a Milvus server's, with ``--milvus server``). milvus-lite runs inside the
consumer and keeps the collection in its memory: with unique image ids the consumer's
RSS would grow with the rows written, which is data, not a leak.

Growth is judged on results, not time: the soak's first ``WARMUP_SHARE`` of results is
warm-up (arenas, caches and Milvus segments filling), the rest is cut into quarters, and
the figure is the last quarter's mean RSS over the first quarter's; the exit status says
whether each consumer's own stayed under ``GOAL``. Written to ``soak.json`` and
``soak.csv`` in ``--out``.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from rich.console import Console

from loadtest.config import LoadtestConfig
from loadtest.consumer import ConsumerProcess, descendants
from loadtest.generator import Phase
from loadtest.report import write_json
from loadtest.run import (
    _bars,
    _consumers,
    _milvus,
    _phase,
    _upload,
    consumer_env,
    fresh_run,
    settings_from,
)

SAMPLE_EVERY_S = 1.0
WARMUP_SHARE = 0.1
GOAL = 0.05  # growth under 5% from the first to the last quarter after warm-up


@dataclass(frozen=True)
class RssSample:
    at: float  # seconds since the soak phase started
    results: int  # results received by then
    rss: dict[str, int]  # "consumer-0" (the process) / "consumer-0+children" -> bytes


def rss_bytes(pid: int) -> int | None:
    """A process's resident set (Linux ``/proc/<pid>/status``); None once it has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def family_rss(pid: int) -> dict[str, int]:
    """The process's own RSS and with its live descendants', by name suffix."""
    own = rss_bytes(pid)
    if own is None:
        return {}
    children = [rss_bytes(child) for child in descendants(pid) - {pid}]
    return {"": own, "+children": own + sum(r for r in children if r is not None)}


def growth(
    samples: Sequence[RssSample], total: int, warmup_share: float = WARMUP_SHARE
) -> dict[str, Any]:
    """Per series: mean RSS of the first and last quarter of results after the warm-up
    share of ``total``, and the relative growth between them."""
    start = total * warmup_share
    span = (total - start) / 4
    first = [s for s in samples if start <= s.results < start + span]
    last = [s for s in samples if s.results >= total - span]
    figures: dict[str, Any] = {}
    for name in sorted({name for s in samples for name in s.rss}):
        before = [s.rss[name] for s in first if name in s.rss]
        after = [s.rss[name] for s in last if name in s.rss]
        if not before or not after:
            continue
        mean_before, mean_after = fmean(before), fmean(after)
        figures[name] = {
            "first_quarter_mib": mean_before / 2**20,
            "last_quarter_mib": mean_after / 2**20,
            "max_mib": max(s.rss[name] for s in samples if name in s.rss) / 2**20,
            "growth": mean_after / mean_before - 1,
            "samples": [len(before), len(after)],
        }
    return figures


class RssSampler:
    """Samples the consumers' RSS beside a phase's result count, until stopped."""

    def __init__(
        self, consumers: Sequence[ConsumerProcess], phase: Phase, servers: dict[str, int]
    ) -> None:
        self.pids = {f"consumer-{i}": c.pid for i, c in enumerate(consumers) if c.pid}
        self.pids |= servers
        self.phase = phase
        self.samples: list[RssSample] = []

    def sample(self, started: float) -> None:
        rss = {
            name + suffix: value
            for name, pid in self.pids.items()
            for suffix, value in family_rss(pid).items()
        }
        self.samples.append(RssSample(time.monotonic() - started, len(self.phase.samples), rss))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RssSampler]:
        started = time.monotonic()

        async def loop() -> None:
            while True:
                await asyncio.to_thread(self.sample, started)
                await asyncio.sleep(SAMPLE_EVERY_S)

        task = asyncio.create_task(loop())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.sample(started)  # the end state, every result in


def write_csv(samples: Sequence[RssSample], path: Path) -> Path:
    names = sorted({name for s in samples for name in s.rss})
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["seconds", "results", *(f"{n}_rss_bytes" for n in names)])
        for s in samples:
            writer.writerow([f"{s.at:.2f}", s.results, *(s.rss.get(n, "") for n in names)])
    return path


async def soak(config: LoadtestConfig, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    runtime, report, stack = fresh_run(config)
    async with stack, _milvus(config, runtime) as milvus:
        env = consumer_env(stack.env(), config, milvus.uri)
        settings = settings_from(env)
        uris, _ = await _upload(settings, config, console)
        async with _consumers(env, config.consumers, runtime) as consumers:
            with _bars(console) as bars:
                run_id = f"soak{int(time.time())}"
                warmup = Phase("warmup", config.batch * config.consumers)
                await _phase(settings, warmup, uris, config, run_id, bars)
                phase = Phase("soak", config.soak, config.rate)
                servers = {"milvus_server": milvus.pid} if milvus.pid else {}
                async with RssSampler(consumers, phase, servers).running() as sampler:
                    await _phase(settings, phase, uris, config, run_id, bars, same_images=True)
    seconds = phase.finished - phase.started
    report |= {
        "events": config.soak,
        "seconds": seconds,
        "images_per_s": config.soak / seconds if seconds > 0 else None,
        "warmup_share": WARMUP_SHARE,
        "rss": growth(sampler.samples, config.soak),
        "files": {"samples": str(write_csv(sampler.samples, config.out / "soak.csv"))},
    }
    write_json(report, config.out / "soak.json")
    return report


def print_soak(report: dict[str, Any], console: Console) -> bool:
    """One line per series; True when every series grew less than the goal."""
    console.print(
        f"soak: {report['events']} events in {report['seconds']:.0f} s "
        f"({report['images_per_s']:.1f}/s), model {report['config']['model']}"
    )
    for name, figure in report["rss"].items():
        console.print(
            f"  {name}: {figure['first_quarter_mib']:.1f} MiB -> {figure['last_quarter_mib']:.1f} "
            f"MiB ({figure['growth']:+.1%}; max {figure['max_mib']:.1f} MiB)"
        )
    own = {n: f for n, f in report["rss"].items() if n.startswith("consumer-") and "+" not in n}
    return bool(own) and all(f["growth"] < GOAL for f in own.values())
