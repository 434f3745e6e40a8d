"""``imagestream loadtest``, ``imagestream bench milvus`` and ``imagestream bench ocr``:
arguments and entry points."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

DEFAULTS_NOTE = "(default: %(default)s)"


def add_commands(sub: Any) -> None:
    """Register the subcommands on ``imagestream``'s subparsers."""
    from loadtest.config import LoadtestConfig

    d = LoadtestConfig()
    lt = sub.add_parser(
        "loadtest",
        help="embedded stack + consumer process: throughput, latency, efficiency vs bare encoder",
    )
    lt.add_argument("-n", "--images", type=int, default=d.images,
                    help=f"per saturation round {DEFAULTS_NOTE}")  # fmt: skip
    lt.add_argument("--model", default=d.model, help=f"CLIP model spec {DEFAULTS_NOTE}")
    lt.add_argument("--batch", type=int, default=d.batch, help=f"max_records {DEFAULTS_NOTE}")
    lt.add_argument("--device", default=d.device, help=DEFAULTS_NOTE)
    lt.add_argument(
        "--rounds",
        type=int,
        default=d.rounds,
        help=f"saturation rounds of N images, bare runs between them {DEFAULTS_NOTE}",
    )
    lt.add_argument("--rate", type=float, help="saturation phase events/s (default: all at once)")
    lt.add_argument("--latency-seconds", type=float, default=d.latency_seconds,
                    help=f"paced phase length, 0 = none {DEFAULTS_NOTE}")  # fmt: skip
    lt.add_argument("--latency-rate", type=float, help="default: half the steady throughput")
    lt.add_argument("--bare-batches", type=int, default=d.bare_batches, help=DEFAULTS_NOTE)
    lt.add_argument("--legacy-iterations", type=int, default=d.legacy_iterations,
                    help=f"legacy loop without sleep, 0 = none {DEFAULTS_NOTE}")  # fmt: skip
    lt.add_argument("--legacy-sleep-iterations", type=int, default=d.legacy_sleep_iterations,
                    help=DEFAULTS_NOTE)  # fmt: skip
    lt.add_argument("--legacy-sleep", type=float, default=d.legacy_sleep_s, help=DEFAULTS_NOTE)
    lt.add_argument("--milvus", default=d.milvus, help=f"lite | server | URI {DEFAULTS_NOTE}")
    lt.add_argument("--partitions", type=int, default=d.partitions, help=DEFAULTS_NOTE)
    lt.add_argument("--consumers", type=int, default=d.consumers,
                    help=f"consumer processes in one group {DEFAULTS_NOTE}")  # fmt: skip
    lt.add_argument("--env", action="append", default=[], metavar="IMAGESTREAM_X__Y=V",
                    help="a consumer setting: IMAGESTREAM_DELIVERY__PREFETCH=off")  # fmt: skip
    lt.add_argument("--out", type=Path, default=d.out, help=DEFAULTS_NOTE)
    lt.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds per phase")
    lt.add_argument("--model-cache-dir", type=Path, help="default: IMAGESTREAM_MODEL_CACHE_DIR")
    lt.add_argument("--soak", type=int, default=0, metavar="N",
                    help="instead: N events, consumers' memory sampled (docs/soak.md)")  # fmt: skip
    lt.set_defaults(handler=loadtest_command)
    bench = sub.add_parser("bench", help="component benchmarks").add_subparsers(
        dest="bench", required=True
    )
    milvus = bench.add_parser("milvus", help="upsert + batched search: milvus-lite vs server")
    milvus.add_argument("--backends", nargs="+", default=["lite", "server"])
    milvus.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000])
    milvus.add_argument("--indexes", nargs="+", default=["HNSW"], help="server index types")
    milvus.add_argument("--dim", type=int, default=512)
    milvus.add_argument("--out", type=Path, default=Path(".imagestream") / "bench-milvus.json")
    milvus.set_defaults(handler=milvus_command)
    ocr = bench.add_parser("ocr", help="ocr task images/s: bare encoder and embedded stack")
    ocr.add_argument("-n", "--images", type=int, default=64, help=DEFAULTS_NOTE)
    ocr.add_argument("--workers", nargs="+", type=int, default=[0],
                     help=f"bare runs, 0 = the default (one per core) {DEFAULTS_NOTE}")  # fmt: skip
    ocr.add_argument("--no-stack", action="store_true", help="bare runs only")
    ocr.add_argument("--out", type=Path, default=Path(".imagestream") / "bench-ocr.json")
    ocr.set_defaults(handler=ocr_command)
    from loadtest import engines_bench, scaleout

    engines_bench.add_parser(bench)
    scaleout.add_parser(bench)


def loadtest_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from loadtest.report import print_summary
    from loadtest.run import loadtest

    config = _config(args)
    console = Console()
    if config.soak:
        from loadtest.soak import print_soak, soak

        return 0 if print_soak(asyncio.run(soak(config, console)), console) else 1
    report = asyncio.run(loadtest(config, console))
    print_summary(report, console)
    saturation = report["phases"]["saturation"]
    efficiency = report["verdicts"]["efficiency"]
    # The last line, for scripts: `make bench | tail -1`.
    print(f"efficiency={efficiency:.3f}" if efficiency is not None else "efficiency=nan")
    return 0 if efficiency is not None and not saturation["missing"] else 1


def _config(args: argparse.Namespace) -> Any:
    from loadtest.config import LoadtestConfig

    try:
        return LoadtestConfig(
            images=args.images, rounds=args.rounds, model=args.model, batch=args.batch,
            device=args.device, rate=args.rate, latency_seconds=args.latency_seconds,
            latency_rate=args.latency_rate,
            bare_batches=args.bare_batches, legacy_iterations=args.legacy_iterations,
            legacy_sleep_iterations=args.legacy_sleep_iterations,
            legacy_sleep_s=args.legacy_sleep, milvus=args.milvus, partitions=args.partitions,
            consumers=args.consumers, out=args.out, timeout_s=args.timeout,
            model_cache_dir=args.model_cache_dir, soak=args.soak,
            extra_env=dict(_setting(item) for item in args.env),
        )  # fmt: skip
    except ValueError as exc:
        raise SystemExit(f"imagestream loadtest: {exc}") from exc


def _setting(item: str) -> tuple[str, str]:
    name, equals, value = item.partition("=")
    if not equals or not name.startswith("IMAGESTREAM_"):
        raise SystemExit(f"--env wants IMAGESTREAM_SECTION__NAME=VALUE, got {item!r}")
    return name, value


def milvus_command(args: argparse.Namespace) -> int:
    from loadtest.milvus_bench import milvus_command

    return milvus_command(args)


def ocr_command(args: argparse.Namespace) -> int:
    from loadtest.ocr_bench import run

    report = run(args.images, args.workers, not args.no_stack, args.out)
    stack = report.get("stack")
    return 0 if stack is None or stack["ok"] == stack["images"] else 1
