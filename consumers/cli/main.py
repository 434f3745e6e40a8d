"""The ``imagestream`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from consumers.cli.commands import add_commands as add_task_commands
from consumers.cli.dlq import add_command as add_dlq_command
from consumers.cli.keys import add_command as add_keys_command
from consumers.cli.legacy import add_command as add_resend_command
from consumers.cli.people import add_command as add_people_command
from consumers.client.console import format_result
from consumers.client.ingest import ingest, uploads_for
from consumers.config.settings import RUNTIME_DIR, Settings
from consumers.contracts import generate as contracts
from consumers.devstack import demo, launcher
from consumers.devstack.servers import StackError
from consumers.devstack.stack import create_topics
from consumers.gateway.server import run_gateway
from consumers.legacy.adapter import HALVES, run_legacy
from consumers.ops.allocator import retain_freed_memory
from consumers.ops.metrics import metrics_server
from consumers.ops.threads import limit_blas_threads
from consumers.pipeline.item_errors import ConfigError, ModelLoadError
from consumers.worker.kafka import client_kwargs
from loadtest.cli import add_commands as add_loadtest_commands
from schemas.topics import Topics


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagestream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the embedded stack and every consumer")
    up.add_argument("--tasks", nargs="*", help="tasks to run (default: all enabled)")
    up.add_argument("--runtime-dir", type=Path, default=RUNTIME_DIR)
    consume = sub.add_parser("consume", help="run consumers against configured servers")
    consume.add_argument("--tasks", nargs="*", help="tasks to run (default: all enabled)")
    sub.add_parser("demo", help="embedded stack + ingest of sample images, then stop")
    ingest = sub.add_parser("ingest", help="upload images, publish events, print results")
    ingest.add_argument("paths", nargs="+", type=Path, help="image files or folders")
    ingest.add_argument("--tasks", nargs="*", help="tasks to ask for (default: all enabled)")
    ingest.add_argument("--top-k", type=int, default=5)
    ingest.add_argument("--timeout", type=float, default=300.0, help="seconds to wait")
    ingest.add_argument("--id-prefix", default="", help="prepended to each file's stem")
    add_task_commands(sub)  # classifier, search
    add_dlq_command(sub)  # dlq replay
    add_keys_command(sub)  # keys create
    add_people_command(sub)  # people recluster
    add_loadtest_commands(sub)  # loadtest, bench
    topics = sub.add_parser("topics", help="Kafka topics").add_subparsers(
        dest="action", required=True
    )
    create = topics.add_parser("create", help="create every topic (existing ones are kept)")
    create.add_argument("--partitions", type=int, help="default: IMAGESTREAM_KAFKA__PARTITIONS")
    create.add_argument("--replication-factor", type=int, default=1)
    sub.add_parser("gateway", help="serve the HTTP gateway (IMAGESTREAM_GATEWAY__*)")
    legacy = sub.add_parser("legacy", help="run the legacy polling adapter (POLLING_URL)")
    legacy.add_argument("--only", choices=["poller", "sender"], help="run one half only")
    add_resend_command(legacy)  # legacy resend
    schemas = sub.add_parser(
        "schemas", help="write schemas/generated (JSON Schema, AsyncAPI) and docs/configuration.md"
    )
    schemas.add_argument("--check", action="store_true", help="fail if they are stale")
    return parser


def _ingest(settings: Settings, args: argparse.Namespace) -> int:
    from rich.progress import Progress

    uploads = uploads_for(args.paths, args.id_prefix)
    tasks = args.tasks or settings.enabled_tasks()
    with Progress(transient=False) as progress:
        bar = progress.add_task("results", total=len(uploads) * len(tasks))

        def shown(result: object) -> None:
            progress.console.print(format_result(result))  # type: ignore[arg-type]
            progress.advance(bar)

        results = asyncio.run(
            ingest(
                settings,
                uploads,
                tasks=tasks,
                top_k=args.top_k,
                timeout_s=args.timeout,
                on_result=shown,
            )
        )
    missing = len(uploads) * len(tasks) - len(results)
    if missing:
        print(f"timed out: {missing} result(s) missing after {args.timeout:.0f}s", file=sys.stderr)
    return 1 if missing else 0


def _schemas(check: bool) -> int:
    if check:
        stale = contracts.stale()
        if stale:
            print(f"stale: {', '.join(stale)}; run `imagestream schemas`", file=sys.stderr)
        return 1 if stale else 0
    for path in contracts.write():
        print(path)
    return 0


def _create_topics(settings: Settings, partitions: int | None, replication: int) -> int:
    from aiokafka.errors import KafkaError

    admin = client_kwargs(settings.kafka)
    servers = admin.pop("bootstrap_servers")
    names = Topics(settings.kafka.topic_prefix).all()
    count = partitions or settings.kafka.partitions
    try:
        asyncio.run(create_topics(servers, names, count, replication, **admin))
    except (StackError, KafkaError) as exc:
        print(f"imagestream: topics on {servers}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(f"{name} ({count} partitions)" for name in names))
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    """The gateway and the legacy adapter, each beside its own metrics endpoint."""
    metrics = settings.metrics
    # /metrics for Prometheus; /readyz here only says the process serves (the gateway's
    # own /readyz, on its port, also checks Kafka and S3).
    with metrics_server(metrics.host, metrics.port, lambda: True):
        if args.command == "gateway":
            asyncio.run(run_gateway(settings))
        else:
            asyncio.run(run_legacy(settings, (args.only,) if args.only else HALVES))
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "up":
        asyncio.run(launcher.up(settings, args.tasks, args.runtime_dir))
    elif args.command == "consume":
        asyncio.run(launcher.consume(settings, args.tasks))
    elif args.command == "demo":
        results = asyncio.run(demo.demo(settings))
        return 0 if results and all(r.status.value == "ok" for r in results) else 1
    elif args.command == "ingest":
        return _ingest(settings, args)
    elif args.command == "schemas":
        return _schemas(args.check)
    elif args.command == "topics":
        return _create_topics(settings, args.partitions, args.replication_factor)
    return 0


QUIET_LOGGERS = ("aiokafka", "faiss", "milvus_lite", "faststream", "botocore")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Per-batch and per-connection chatter from libraries buries the lines that matter.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level)
    retain_freed_memory(settings.malloc_keep_mb)
    limit_blas_threads(settings.blas_threads)
    try:
        if hasattr(args, "handler"):  # classifier, search: consumers/cli/commands.py
            return int(args.handler(args))
        light = args.command in ("gateway", "legacy")
        return (_serve if light else _run)(args, settings)
    except (ModelLoadError, ConfigError) as exc:
        print(f"imagestream: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
