"""The system under test as its own process: ``imagestream consume`` with a given env.

A separate interpreter, so the load generator's publishing and result parsing never
hold the consumer's GIL. Readiness is the consumer's own ``/readyz`` (models loaded,
broker started) on a metrics port picked here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from prometheus_client.parser import text_string_to_metric_families

from consumers.devstack.servers import HOST, die_with_parent, free_port, terminate

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ConsumerProcess:
    def __init__(
        self, env: Mapping[str, str], log_path: Path, tasks: Sequence[str] = ("clip",)
    ) -> None:
        self.metrics_port = free_port()
        self.env = {**os.environ, **env, "IMAGESTREAM_METRICS__PORT": str(self.metrics_port)}
        self.log_path = log_path
        self.tasks = list(tasks)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self, timeout_s: float = 300.0) -> Self:
        command = [sys.executable, "-m", "consumers.cli", "consume", "--tasks", *self.tasks]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: ASYNC220 (the death signal follows this thread)
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env,
                start_new_session=True, preexec_fn=die_with_parent(),  # noqa: PLW1509
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not await asyncio.to_thread(self._ready):
            if self.process.poll() is not None:
                raise RuntimeError(self._why(f"exited with status {self.process.returncode}"))
            if time.monotonic() > deadline:
                await self.stop()
                raise RuntimeError(self._why(f"not ready after {timeout_s:.0f} s"))
            await asyncio.sleep(0.25)
        return self

    def _ready(self) -> bool:
        url = f"http://{HOST}:{self.metrics_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def results_published(self) -> int:
        """The results this process has published (its ``imagestream_results_total``)."""
        return results_published(self.metrics_port)

    def _why(self, what: str) -> str:
        tail = self.log_path.read_text(errors="replace").splitlines()[-20:]
        return f"consumer {what}; {self.log_path} ends:\n" + "\n".join(tail)

    async def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (drains the in-flight batch), SIGKILL after ``timeout_s``."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            await asyncio.to_thread(terminate, process, timeout_s)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


@contextlib.contextmanager
def frozen(consumers: Sequence[ConsumerProcess]) -> Iterator[None]:
    """Every consumer stopped (SIGSTOP to its process group, milvus-lite child
    included) meanwhile, and continued after.

    For the bare runs between saturation rounds: an idle consumer still polls the
    broker and heartbeats (0.013 cores, and 0.008 of the broker's, measured here), which
    would slow the bare figure and flatter the ratio. Tansu keeps a member stopped for
    longer than its 6 s session timeout: measured with 11 s bare runs, no rebalance was
    logged, and each round's first result came 2.1 s after its first event (a rejoin
    alone takes Tansu 3 s). A broker that drops it instead costs a rejoin, which falls
    in the round's first batch, and no round counts its first batch.
    """
    groups = [os.getpgid(pid) for consumer in consumers if (pid := consumer.pid) is not None]
    for group in groups:
        os.killpg(group, signal.SIGSTOP)
    try:
        yield
    finally:
        for group in groups:
            os.killpg(group, signal.SIGCONT)


def results_published(metrics_port: int) -> int:
    """The ``imagestream_results_total`` of the process serving metrics on this port."""
    url = f"http://{HOST}:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return round(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "imagestream_results"
            for sample in family.samples
            if sample.name == "imagestream_results_total"
        )
    )


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU of a process and its live descendants (Linux /proc; else None).

    milvus-lite, for one, runs as a child of the consumer.
    """
    if pid is None or not Path("/proc/self/stat").exists():
        return None
    stats = _proc_stats()
    if pid not in stats:
        return None
    return sum(stats[p][1] for p in descendants(pid, stats)) / _CLOCK_TICKS


def descendants(pid: int, stats: dict[int, tuple[int, int]] | None = None) -> set[int]:
    """The process and its live descendants (Linux /proc; empty elsewhere)."""
    stats = _proc_stats() if stats is None else stats
    if pid not in stats:
        return set()
    family, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, (ppid, _) in stats.items() if ppid == parent and p not in family]
        family.update(children)
        frontier.extend(children)
    return family


def cores_used(spans: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """CPU seconds per wall second of each process over one or more (before, after)
    spans, summed (2.0 = two busy cores)."""
    used: dict[str, float] = {}
    wall = 0.0
    for before, after in spans:
        wall += float(after["time"] or 0) - float(before["time"] or 0)
        for name, value in before.items():
            if name != "time" and value is not None and (end := after.get(name)) is not None:
                used[name] = used.get(name, 0.0) + end - value
    return {name: seconds / wall for name, seconds in used.items()} if wall > 0 else {}


def thread_cpu_seconds(pid: int | None) -> dict[str, float]:
    """CPU seconds of a process's live threads by thread name (Linux; else empty). The
    consumer names its pools' threads (decode, device, milvus), and threads inherit the
    name of the thread that started them (the model's OpenMP workers: device)."""
    by_name: dict[str, float] = {}
    tasks = Path(f"/proc/{pid}/task")
    for thread in tasks.iterdir() if pid is not None and tasks.exists() else []:
        if (stat := _read_stat(thread)) is not None:
            name, _, ticks = stat
            by_name[name] = by_name.get(name, 0.0) + ticks / _CLOCK_TICKS
    return by_name


def _proc_stats() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, user + system ticks)."""
    stats: dict[int, tuple[int, int]] = {}
    if not Path("/proc/self/stat").exists():
        return stats
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _read_stat(entry)) is not None:
            _, parent, ticks = stat
            stats[int(entry.name)] = (parent, ticks)
    return stats


def _read_stat(folder: Path) -> tuple[str, int, int] | None:
    """(name, parent pid, user + system ticks) from a process's or thread's ``stat``;
    None once it has gone."""
    try:
        text = (folder / "stat").read_text()
    except OSError:
        return None
    # The name (field 2) may hold spaces and parentheses: split after its last ")".
    name, fields = (
        text[text.index("(") + 1 : text.rindex(")")],
        text[text.rindex(")") + 2 :].split(),
    )
    return name, int(fields[1]), int(fields[11]) + int(fields[12])


def self_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system
