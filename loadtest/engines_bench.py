"""``imagestream bench engines``: bare images/s of every engine and precision, side by side.

One process loads the model once per (engine, precision) (torch fp32, torch bf16 under
autocast, ONNX Runtime fp32 and int8, OpenVINO fp32, bf16 and int8: consumers/models/
engines.py), preprocesses one batch of synthetic JPEGs, and then runs the same
``Encoder.encode_images`` call the consumer's infer step makes, round-robin over the
engines for several rounds, so that this machine's drift over minutes hits every engine
alike. Each engine's vectors are compared with torch fp32's (min cosine per image).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from consumers.config.settings import Settings
from loadtest.bare import bare_benchmark, load_encoder, prepare
from loadtest.report import machine
from loadtest.synth import photo_jpeg

ENGINES = ["torch/fp32", "torch/bf16", "onnx/fp32", "onnx/int8", "openvino/fp32",
           "openvino/bf16", "openvino/int8"]  # fmt: skip


def add_parser(bench: Any) -> None:
    p = bench.add_parser("engines", help="bare images/s per engine and precision, one run")
    p.add_argument("--model", default="random:vit-b-32")
    p.add_argument("--task", default="clip", choices=["clip", "dinov2"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=3, help="timed calls per engine per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--engines", nargs="+", default=ENGINES, metavar="ENGINE/PRECISION")
    p.add_argument("--out", type=Path, default=Path(".imagestream") / "bench-engines.json")
    p.add_argument("--model-cache-dir", type=Path)
    p.set_defaults(handler=engines_command)


def _settings(args: argparse.Namespace, name: str) -> Settings:
    engine, _, precision = name.partition("/")
    task = {"model": args.model, "device": "cpu", "engine": engine, "precision": precision}
    values: dict[str, Any] = {args.task: task}
    if args.model_cache_dir:
        values["model_cache_dir"] = args.model_cache_dir
    return Settings.model_validate(values)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if "torch/fp32" not in args.engines:
        args.engines = ["torch/fp32", *args.engines]  # the reference for speed and cosine
    encoders = {name: load_encoder(_settings(args, name), args.task) for name in args.engines}
    reference = encoders["torch/fp32"]
    images = [photo_jpeg(i) for i in range(args.batch)]
    tensors = prepare(reference, reference.settings, images)
    expected = reference.encode_images(tensors)
    cosine = {
        name: float((encoder.encode_images(tensors) * expected).sum(axis=1).min())
        for name, encoder in encoders.items()
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in encoders}
    for _ in range(args.rounds):
        for name, encoder in encoders.items():
            runs[name].append(bare_benchmark(encoder, tensors, args.batches))
    base = float(np.mean([r["images_per_s"] for r in runs["torch/fp32"]]))
    rows = [_row(name, encoders[name], runs[name], cosine[name], base) for name in encoders]
    fastest = max(rows, key=lambda row: row["images_per_s"])
    return {"model": args.model, "task": args.task, "batch": args.batch, "rounds": args.rounds,
            "machine": machine(), "engines": rows, "fastest": fastest["engine"],
            "best_vs_torch_fp32": fastest["vs_torch_fp32"]}  # fmt: skip


def _row(
    name: str, encoder: Any, runs: list[dict[str, Any]], cosine: float, base: float
) -> dict[str, Any]:
    speeds = [r["images_per_s"] for r in runs]
    towers = getattr(encoder, "towers", None) or {}
    tower = towers.get("image") or getattr(encoder, "tower", None)
    return {
        "engine": name,
        # What the runtime computes in: OpenVINO keeps f32 where the CPU has no bf16.
        "effective_precision": tower.precision if tower is not None else encoder.precision,
        "images_per_s": float(np.mean(speeds)),
        "per_round": speeds,
        "vs_torch_fp32": float(np.mean(speeds)) / base,
        "min_cosine_vs_torch_fp32": cosine,
    }


def engines_command(args: argparse.Namespace) -> int:
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"{'engine':<15} {'computes':>8} {'images/s':>9} {'x fp32':>7} {'min cos':>9}  rounds")
    for row in report["engines"]:
        rounds = " ".join(f"{s:.1f}" for s in row["per_round"])
        speed, ratio, cos = (
            row["images_per_s"],
            row["vs_torch_fp32"],
            row["min_cosine_vs_torch_fp32"],
        )
        precision = row["effective_precision"]
        print(
            f"{row['engine']:<15} {precision:>8} {speed:>9.1f} {ratio:>7.2f} {cos:>9.5f}  {rounds}"
        )
    print(f"report: {args.out}")
    print(f"fastest={report['fastest']} x{report['best_vs_torch_fp32']:.2f}")
    return 0
