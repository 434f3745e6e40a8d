"""``imagestream loadtest``: one run, every figure side by side on the same machine.

1. The embedded stack (Tansu broker, moto S3 server) starts in this process's children;
   N synthetic 640x480 JPEGs go to S3.
2. The legacy loop, then the bare encoder benchmark, in this process, before the consumer
   exists, so nothing competes with them; the bare benchmark runs again once the consumer
   has stopped. Bare last before the consumer: the closer the two bare runs are to the
   saturation phase, the less the machine's drift moves the efficiency ratio.
3. ``imagestream consume --tasks clip`` starts as its own process against the stack and
   Milvus (milvus-lite in a fresh folder, a Milvus server, or a given URI).
4. Phases, each read back through the results topic: ``warmup`` (one batch: group join,
   first model call; not reported), ``saturation`` (N events at once, or at ``--rate``),
   ``latency`` (paced at half the saturation phase's steady-state throughput).
5. report.json, samples.csv and PNG plots in the output folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from consumers.encoders.base import Encoder
from consumers.encoders.clip import ClipEncoder
from consumers.launcher import DEV_KAFKA
from consumers.s3 import S3Store
from consumers.settings import MilvusSettings, Settings
from consumers.stack import EmbeddedStack
from consumers.store import VectorStore
from loadtest import bare as bare_bench
from loadtest.config import LoadtestConfig
from loadtest.consumer import ConsumerProcess, cpu_seconds, self_cpu_seconds, thread_cpu_seconds
from loadtest.generator import Phase, presigned_urls, run_phase, upload_images
from loadtest.legacy import legacy_baseline
from loadtest.milvus_server import milvus_server
from loadtest.plots import write_plots
from loadtest.report import loadavg, machine, phase_figures, verdicts, write_json, write_samples
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
async def _milvus(config: LoadtestConfig, runtime: Path) -> AsyncIterator[str]:
    if config.milvus == "lite":
        yield str(runtime / "milvus.db")
    elif config.milvus == "server":
        with milvus_server() as uri:
            yield uri
    else:
        yield config.milvus


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


def _cpu(consumers: list[ConsumerProcess], stack: EmbeddedStack) -> dict[str, float | None]:
    used = [cpu_seconds(consumer.pid) for consumer in consumers]
    return {
        "consumer": None if None in used else sum(u for u in used if u is not None),
        "generator": self_cpu_seconds(),
        "broker": cpu_seconds(stack.broker.pid),
        "s3_server": cpu_seconds(stack.s3.pid),
        "time": time.time(),
    } | {
        f"consumer thread {name}": seconds
        for name, seconds in thread_cpu_seconds(consumers[0].pid if consumers else None).items()
    }


def _cores_used(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, Any]:
    """CPU seconds per wall second of each process over a phase (2.0 = two busy cores)."""
    wall = float(after["time"] or 0) - float(before["time"] or 0)
    return {
        name: (end - value) / wall
        for name, value in before.items()
        if name != "time"
        and value is not None
        and (end := after.get(name)) is not None
        and wall > 0
    }


async def _phase(
    settings: Settings, phase: Phase, uris: list[str], config: LoadtestConfig, run_id: str,
    bars: Progress,
) -> Phase:  # fmt: skip
    label = f"{phase.name} ({f'{phase.rate:.1f}/s' if phase.rate else 'all at once'})"
    bar = bars.add_task(label, total=phase.count)
    await run_phase(
        settings, phase, uris, run_id=run_id, task=TASK, timeout_s=config.timeout_s,
        on_result=lambda _: bars.advance(bar),
    )  # fmt: skip
    return phase


async def _phases(
    settings: Settings, config: LoadtestConfig, uris: list[str],
    consumers: list[ConsumerProcess], stack: EmbeddedStack, bars: Progress,
) -> tuple[list[Phase], dict[str, Any]]:  # fmt: skip
    run_id = uuid.uuid4().hex[:8]
    await _phase(settings, Phase("warmup", config.batch), uris, config, run_id, bars)
    phases, cpu = [], {}
    saturation = Phase("saturation", config.images, config.rate)
    plan = [saturation]
    for phase in plan:
        before, load = _cpu(consumers, stack), loadavg()
        phases.append(await _phase(settings, phase, uris, config, run_id, bars))
        cpu[phase.name] = {"cores": _cores_used(before, _cpu(consumers, stack)), "loadavg": load}
        if phase is saturation and config.latency_seconds > 0:
            rate = config.latency_rate or _half_rate(phase)
            if rate:
                count = max(config.batch, round(rate * config.latency_seconds))
                plan.append(Phase("latency", count, rate))
    return phases, cpu


def _half_rate(phase: Phase) -> float | None:
    steady = phase_figures([phase])[phase.name]["steady_state"]
    return steady["images_per_s"] / 2 if steady else None


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
    plots = write_plots(phases, out)
    report["files"] = {
        "report": str(out / "report.json"),
        "samples": str(write_samples(phases, out / "samples.csv")),
        "plots": [str(p) for p in plots],
        "consumer_log": str(out / "runtime" / "consumer.log"),
    }
    write_json(report, out / "report.json")
    return report


async def loadtest(config: LoadtestConfig, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    runtime = config.out / "runtime"
    shutil.rmtree(runtime, ignore_errors=True)
    report: dict[str, Any] = {"config": asdict(config), "machine": machine()}
    report["loadavg_start"] = loadavg()
    stack = EmbeddedStack(Topics().all(), [BUCKET], config.partitions, runtime)
    async with stack, _milvus(config, runtime) as milvus_uri:
        env = consumer_env(stack.env(), config, milvus_uri)
        settings = settings_from(env)
        uris, urls = await _upload(settings, config, console)
        console.print("the legacy loop, then the bare encoder benchmark (no progress bar)")
        bare_run, encoder = await asyncio.to_thread(_bare, settings, config)
        legacy = await _legacy(encoder, config, urls, runtime)
        bare_before = await asyncio.to_thread(bare_run)
        async with _consumers(env, config.consumers, runtime) as consumers:
            with _bars(console) as bars:
                phases, cpu = await _phases(settings, config, uris, consumers, stack, bars)
            # The group's balance, warm-up included.
            report["results_per_consumer"] = [
                await asyncio.to_thread(consumer.results_published) for consumer in consumers
            ]
        console.print("bare encoder benchmark again, the consumer stopped")
        bare = bare_bench.bracket(bare_before, await asyncio.to_thread(bare_run))
    figures = phase_figures(phases)
    report |= {"bare": bare, "legacy": legacy, "phases": figures, "cpu_cores": cpu}
    report["verdicts"] = verdicts(figures, bare, cpu)
    report["loadavg_end"] = loadavg()
    return _write(report, phases, config.out)
