"""``imagestream bench scaleout``: 1, 2, 4 consumer processes feeding a simulated GPU.

Each count is one ``imagestream loadtest`` run (loadtest/run.py) with the ``sim:`` model
(consumers/models/sim.py: the device time is a sleep, so every CPU second measured is
the pipeline's own: fetch, decode, preprocess, Kafka, Milvus, publish) against the
Milvus standalone server, the consumers in one group. Reported per count: steady
images/s, speed-up over one consumer, the consumers' CPU milliseconds per image (all of
it outside the model), the servers' (broker, S3, Milvus), and the cores that CPU cost
implies for one GPU at ``--target`` images/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from loadtest.config import LoadtestConfig

SERVERS = ("broker", "s3_server", "milvus_server")


def add_parser(bench: Any) -> None:
    p = bench.add_parser("scaleout", help="1/2/4 consumers on a sim: GPU, CPU ms per image")
    p.add_argument("--model", default="sim:40ms/32", help="sim:<ms>ms/<batch>[:<dim>]")
    p.add_argument("--consumers", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("-n", "--images", type=int, default=960, help="per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--target", type=float, default=5000.0, help="images/s one GPU is fed")
    p.add_argument("--out", type=Path, default=Path(".imagestream") / "bench-scaleout")
    p.set_defaults(handler=scaleout_command)


def _config(args: argparse.Namespace, consumers: int) -> LoadtestConfig:
    return LoadtestConfig(
        images=args.images, rounds=args.rounds, model=args.model, batch=32,
        latency_seconds=0, legacy_iterations=0, bare_batches=2, milvus="server",
        partitions=args.partitions, consumers=consumers, out=args.out / f"consumers-{consumers}",
    )  # fmt: skip


def row(report: dict[str, Any], consumers: int, target: float) -> dict[str, Any]:
    """One count's figures from its loadtest report."""
    saturation = report["phases"]["saturation"]
    steady = (saturation.get("steady_state") or {}).get("images_per_s")
    # CPU was sampled over the rounds' whole spans, so it goes over their overall rate.
    overall = saturation["overall_images_per_s"]
    cores = report["cpu_cores"]["saturation"]["cores"]
    consumer_ms = 1000 * cores["consumer"] / overall
    server_ms = {name: 1000 * cores[name] / overall for name in SERVERS if name in cores}
    total_ms = consumer_ms + sum(server_ms.values())
    return {
        "consumers": consumers,
        "images_per_s": steady,
        "overall_images_per_s": overall,
        "consumer_cores": cores["consumer"],
        "consumer_cpu_ms_per_image": consumer_ms,
        "server_cpu_ms_per_image": server_ms,
        "pipeline_cpu_ms_per_image": total_ms,
        "cores_for_target": target * total_ms / 1000,
        "loadavg": report["cpu_cores"]["saturation"]["loadavg"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from loadtest.run import loadtest

    rows = []
    for count in args.consumers:
        report = asyncio.run(loadtest(_config(args, count)))
        rows.append(row(report, count, args.target))
    base = rows[0]["images_per_s"] or 0.0
    for item in rows:
        item["speedup"] = (item["images_per_s"] or 0.0) / base if base else None
    from loadtest.report import machine

    return {"model": args.model, "target_images_per_s": args.target, "machine": machine(),
            "rows": rows}  # fmt: skip


def scaleout_command(args: argparse.Namespace) -> int:
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaleout.json").write_text(json.dumps(report, indent=2))
    print(f"{'consumers':>9} {'images/s':>9} {'speedup':>8} {'consumer ms/img':>16} "
          f"{'servers ms/img':>15} {'cores @target':>14}")  # fmt: skip
    for r in report["rows"]:
        servers = sum(r["server_cpu_ms_per_image"].values())
        print(f"{r['consumers']:>9} {r['images_per_s'] or 0:>9.1f} {r['speedup'] or 0:>8.2f} "
              f"{r['consumer_cpu_ms_per_image']:>16.2f} {servers:>15.2f} "
              f"{r['cores_for_target']:>14.1f}")  # fmt: skip
    print(f"report: {args.out / 'scaleout.json'}")
    return 0
