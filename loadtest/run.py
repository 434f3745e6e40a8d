"""``imagestream loadtest``: one run, every figure side by side on the same machine.

1. The embedded stack (Tansu broker, moto S3 server) starts in this process's children;
   N synthetic 640x480 JPEGs go to S3.
2. The legacy loop, in this process, before the consumer exists.
3. ``imagestream consume --tasks clip`` starts as its own process against the stack and
   Milvus (milvus-lite in a fresh folder, a Milvus server, or a given URI).
4. Phases, each read back through the results topic: ``warmup`` (one batch: group join,
   first model call; not reported); ``saturation-1`` .. ``saturation-R`` (N events each,
   at once or at ``--rate``), with the bare encoder benchmark (this process, the consumer
   frozen) before the first round, between rounds and after the last, so that each
   round is judged against bare runs a few seconds away, not minutes: this machine's
   speed drifts by 10-20% within minutes; ``latency`` (paced at half the rounds'
   steady-state throughput).
5. report.json, samples.csv and PNG plots in the output folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from consumers.config.settings import MilvusSettings, Settings
from consumers.devstack.launcher import DEV_KAFKA
from consumers.devstack.stack import EmbeddedStack
from consumers.models.clip import ClipEncoder
from consumers.models.encoder import Encoder
from consumers.pipeline.s3 import S3Store
from consumers.vectorstore.store import VectorStore
from loadtest import bare as bare_bench
from loadtest.config import LoadtestConfig
from loadtest.consumer import (
    ConsumerProcess,
    cores_used,
    cpu_seconds,
    frozen,
    self_cpu_seconds,
    thread_cpu_seconds,
)
from loadtest.generator import Phase, presigned_urls, run_phase, upload_images
from loadtest.legacy import legacy_baseline
from loadtest.milvus_server import RunningMilvus, milvus_server
from loadtest.plots import write_plots
from loadtest.report import (
    SATURATION,
    loadavg,
    machine,
    phase_figures,
    round_name,
    rounds_steady,
    verdicts,
    write_json,
    write_samples,
)
from loadtest.synth import photo_jpeg
from schemas.topics import Topics

TASK = "clip"
BUCKET = "images"


def consumer_env(
    stack_env: dict[str, str], config: LoadtestConfig, milvus_uri: str
) -> dict[str, str]:
    """The one source of the system under test's settings (this process reads them too)."""
    env = {**stack_env, **{f"IMAGESTREAM_KAFKA__{k}": v for k, v in DEV_KAFKA.items()}}
    env |= {
        "IMAGESTREAM_MILVUS__URI": milvus_uri,
        "IMAGESTREAM_CLIP__MODEL": config.model,
        "IMAGESTREAM_CLIP__DEVICE": config.device,
        "IMAGESTREAM_CLIP__MAX_RECORDS": str(config.batch),
        "IMAGESTREAM_KAFKA__PARTITIONS": str(config.partitions),
        "IMAGESTREAM_S3__BUCKET": BUCKET,
    }
    if config.model_cache_dir is not None:
        env["IMAGESTREAM_MODEL_CACHE_DIR"] = str(config.model_cache_dir)
    return env | config.extra_env


def settings_from(env: dict[str, str]) -> Settings:
    """``IMAGESTREAM_A__B=v`` -> ``Settings(a={"b": v})``, layered over this process's env."""
    nested: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith("IMAGESTREAM_"):
            continue
        *sections, name = key.removeprefix("IMAGESTREAM_").lower().split("__")
        level = nested
        for section in sections:
            level = level.setdefault(section, {})
        level[name] = value
    return Settings(**nested)


@contextlib.asynccontextmanager
async def _milvus(config: LoadtestConfig, runtime: Path) -> AsyncIterator[RunningMilvus]:
    """The URI; and the process id where a server of ours runs (milvus-lite runs inside
    the consumer and counts as its CPU; a given URI's server is not ours to measure)."""
    if config.milvus == "lite":
        yield RunningMilvus(str(runtime / "milvus.db"), None)
    elif config.milvus == "server":
        with milvus_server() as running:
            yield running
    else:
        yield RunningMilvus(config.milvus, None)


def _bare(
    settings: Settings, config: LoadtestConfig
) -> tuple[Callable[[], dict[str, Any]], Encoder]:
    """The bare encoder benchmark, ready to run (blocking) before and after the consumer's
    phases; the loaded encoder also serves the legacy loop."""
    encoder = bare_bench.load_encoder(settings, TASK)
    tensors = bare_bench.prepare(encoder, settings, [photo_jpeg(i) for i in range(config.batch)])
    return partial(bare_bench.bare_benchmark, encoder, tensors, config.bare_batches), encoder


async def _legacy(
    encoder: Encoder, config: LoadtestConfig, urls: list[str], runtime: Path
) -> dict[str, Any] | None:
    if not config.legacy_iterations or not isinstance(encoder, ClipEncoder):
        return None
    milvus = MilvusSettings(uri=str(runtime / "legacy-milvus.db"))
    store = VectorStore(milvus, "legacy_clip", encoder.dim)
    await asyncio.to_thread(store.open)
    try:
        return await legacy_baseline(
            encoder, store, urls, iterations=config.legacy_iterations,
            sleep_iterations=config.legacy_sleep_iterations, sleep_s=config.legacy_sleep_s,
            workdir=runtime / "legacy",
        )  # fmt: skip
    finally:
        await asyncio.to_thread(store.close)


@contextlib.contextmanager
def _bars(console: Console) -> Iterator[Progress]:
    with Progress(console=console, transient=False) as progress:
        yield progress


def _cpu(
    consumers: list[ConsumerProcess], servers: dict[str, int | None]
) -> dict[str, float | None]:
    used = [cpu_seconds(consumer.pid) for consumer in consumers]
    return {
        "consumer": None if None in used else sum(u for u in used if u is not None),
        "generator": self_cpu_seconds(),
        **{name: cpu_seconds(pid) for name, pid in servers.items()},
        "time": time.time(),
    } | {
        f"consumer thread {name}": seconds
        for name, seconds in thread_cpu_seconds(consumers[0].pid if consumers else None).items()
    }


async def _phase(
    settings: Settings, phase: Phase, uris: list[str], config: LoadtestConfig, run_id: str,
    bars: Progress, same_images: bool = False,
) -> Phase:  # fmt: skip
    label = f"{phase.name} ({f'{phase.rate:.1f}/s' if phase.rate else 'all at once'})"
    bar = bars.add_task(label, total=phase.count)
    await run_phase(
        settings, phase, uris, run_id=run_id, task=TASK, timeout_s=config.timeout_s,
        on_result=lambda _: bars.advance(bar), same_images=same_images,
    )  # fmt: skip
    return phase


@dataclass
class _Run:
    """One load test's moving parts, for its phases."""

    settings: Settings
    config: LoadtestConfig
    uris: list[str]
    consumers: list[ConsumerProcess]
    servers: dict[str, int | None]  # name -> process id, for CPU time
    bare: Callable[[], dict[str, Any]]
    bars: Progress
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    async def phase(self, phase: Phase) -> tuple[Phase, tuple[dict[str, Any], dict[str, Any]]]:
        before = _cpu(self.consumers, self.servers)
        await _phase(self.settings, phase, self.uris, self.config, self.run_id, self.bars)
        return phase, (before, _cpu(self.consumers, self.servers))

    async def bare_frozen(self) -> dict[str, Any]:
        with frozen(self.consumers):
            return await asyncio.to_thread(self.bare)


async def _phases(run: _Run) -> tuple[list[Phase], dict[str, Any], list[dict[str, Any]]]:
    """Warm-up; then the bare benchmark, and after it each saturation round followed by
    the bare benchmark again, the consumers frozen for those; then the latency phase.
    Returns the phases, CPU cores used per phase, and the bare runs in order."""
    config = run.config
    # A batch per consumer: each pays for its first model call here, not in round 1.
    await run.phase(Phase("warmup", config.batch * config.consumers))
    bares, rounds, spans = [await run.bare_frozen()], [], []
    for index in range(1, config.rounds + 1):
        phase, span = await run.phase(Phase(round_name(index), config.images, config.rate))
        rounds.append(phase)
        spans.append(span)
        bares.append(await run.bare_frozen())
    cpu = {SATURATION: {"cores": cores_used(spans), "loadavg": loadavg()}}
    steady = rounds_steady(rounds)
    rate = config.latency_rate or (steady["images_per_s"] / 2 if steady else None)
    if config.latency_seconds > 0 and rate:
        count = max(config.batch, round(rate * config.latency_seconds))
        latency, span = await run.phase(Phase("latency", count, rate))
        rounds.append(latency)
        cpu["latency"] = {"cores": cores_used([span]), "loadavg": loadavg()}
    return rounds, cpu, bares


async def _upload(
    settings: Settings, config: LoadtestConfig, console: Console
) -> tuple[list[str], list[str]]:
    """s3:// URIs of the synthetic images, and presigned HTTP links for the legacy loop."""
    with _bars(console) as bars:
        upload = bars.add_task("synthetic JPEGs to S3", total=config.images)
        async with S3Store(settings.s3) as s3:
            uris = await upload_images(
                s3, BUCKET, config.images, "loadtest", lambda n: bars.advance(upload, n)
            )
            urls = await presigned_urls(s3, uris[: max(1, config.legacy_iterations)])
    return uris, urls


@contextlib.asynccontextmanager
async def _consumers(
    env: dict[str, str], count: int, runtime: Path
) -> AsyncIterator[list[ConsumerProcess]]:
    """``count`` consumer processes in one group; the phases start once all are ready."""
    async with contextlib.AsyncExitStack() as stack:
        logs = [
            runtime / f"consumer-{i}.log" if i else runtime / "consumer.log" for i in range(count)
        ]
        yield list(
            await asyncio.gather(
                *(stack.enter_async_context(ConsumerProcess(env, log, [TASK])) for log in logs)
            )
        )


def _write(report: dict[str, Any], phases: list[Phase], out: Path) -> dict[str, Any]:
    plots = write_plots(phases, out, report["bare"]["runs"])
    report["files"] = {
        "report": str(out / "report.json"),
        "samples": str(write_samples(phases, out / "samples.csv")),
        "plots": [str(p) for p in plots],
        "consumer_log": str(out / "runtime" / "consumer.log"),
    }
    write_json(report, out / "report.json")
    return report


def fresh_run(config: LoadtestConfig) -> tuple[Path, dict[str, Any], EmbeddedStack]:
    """A run's runtime folder, emptied; its report, begun; its embedded stack, not started."""
    runtime = config.out / "runtime"
    shutil.rmtree(runtime, ignore_errors=True)
    report: dict[str, Any] = {"config": asdict(config), "machine": machine()}
    return runtime, report, EmbeddedStack(Topics().all(), [BUCKET], config.partitions, runtime)


async def loadtest(config: LoadtestConfig, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    runtime, report, stack = fresh_run(config)
    report["loadavg_start"] = loadavg()
    async with stack, _milvus(config, runtime) as milvus:
        env = consumer_env(stack.env(), config, milvus.uri)
        servers = {"broker": stack.broker.pid, "s3_server": stack.s3.pid}
        servers |= {"milvus_server": milvus.pid} if milvus.pid else {}
        settings = settings_from(env)
        uris, urls = await _upload(settings, config, console)
        console.print("the legacy loop (no progress bar)")
        bare_run, encoder = await asyncio.to_thread(_bare, settings, config)
        report["legacy"] = await _legacy(encoder, config, urls, runtime)
        async with _consumers(env, config.consumers, runtime) as consumers:
            console.print("bare encoder benchmark before, between and after the saturation rounds")
            with _bars(console) as bars:
                run = _Run(settings, config, uris, consumers, servers, bare_run, bars)
                phases, cpu, bare_runs = await _phases(run)
            # The group's balance, warm-up included.
            report["results_per_consumer"] = [
                await asyncio.to_thread(consumer.results_published) for consumer in consumers
            ]
        bare = bare_bench.bracket(bare_runs)
    figures = phase_figures(phases)
    report |= {"bare": bare, "phases": figures, "cpu_cores": cpu}
    report["verdicts"] = verdicts(figures, bare, cpu)
    report["loadavg_end"] = loadavg()
    return _write(report, phases, config.out)
