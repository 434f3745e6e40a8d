"""``python -m loadtest.peers`` (``make bench-peers``): Infinity beside imagestream.

One run, alternating on the same machine: an Infinity round, then ``imagestream
loadtest`` in the first engine setting (its bare encoder runs and saturation rounds:
Kafka -> S3 -> model -> Milvus upsert + search -> results; Infinity idle meanwhile, its
CPU recorded), another Infinity round, the next engine setting, and so on, ending with an
Infinity round. The last line is ``vs_infinity=<imagestream e2e / Infinity images/s>``
for the fastest imagestream setting (each setting's ratio is in the report).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np

from consumers.config.settings import Settings
from consumers.pipeline.decode import decode_image
from loadtest.bare import load_encoder
from loadtest.config import LoadtestConfig
from loadtest.consumer import cpu_seconds
from loadtest.peers import infinity
from loadtest.report import loadavg, machine
from loadtest.synth import photo_jpeg


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.peers", description=__doc__)
    p.add_argument("--venv", type=Path, default=Path(".venv-infinity"), help="Infinity's venv")
    p.add_argument("--images", type=int, default=640, help="per round, both systems")
    p.add_argument("--rounds", type=int, default=2, help="imagestream saturation rounds")
    p.add_argument("--batch", type=int, default=32, help="Infinity --batch-size, max_records")
    p.add_argument("--concurrency", type=int, default=32, help="Infinity requests in flight")
    p.add_argument("--per-request", type=int, default=1, help="images per Infinity request")
    p.add_argument("--engines", nargs="+", default=["torch/fp32", "onnx/fp32"],
                   metavar="ENGINE/PRECISION", help="imagestream settings, in turn")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path(".imagestream") / "bench-peers")
    return p


def _same_model(server: infinity.InfinityServer, settings: Settings) -> float:
    """Min cosine between Infinity's and imagestream's (torch fp32) vectors of 8 JPEGs."""
    encoder = load_encoder(settings)
    jpegs = [photo_jpeg(i) for i in range(8)]
    ours = encoder.encode_images(
        [encoder.preprocess(decode_image(j, settings.decode)) for j in jpegs]
    )
    theirs = np.asarray(infinity.vectors(server, infinity.data_uris(8)), dtype=np.float32)
    theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
    return float((ours * theirs).sum(axis=1).min())


def _imagestream(args: argparse.Namespace, setting: str) -> dict[str, Any]:
    from loadtest.run import loadtest

    engine, _, precision = setting.partition("/")
    env = {"IMAGESTREAM_CLIP__ENGINE": engine, "IMAGESTREAM_CLIP__PRECISION": precision}
    config = LoadtestConfig(
        images=args.images, rounds=args.rounds, batch=args.batch, latency_seconds=0,
        legacy_iterations=0, out=args.out / setting.replace("/", "-"), extra_env=env,
    )  # fmt: skip
    verdicts = asyncio.run(loadtest(config))["verdicts"]
    keys = ("e2e_images_per_s", "bare_images_per_s", "efficiency")
    return {"setting": setting} | {key: verdicts[key] for key in keys}


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings(_env_file=None, clip={"model": "random:vit-b-32", "device": "cpu"})
    args.out.mkdir(parents=True, exist_ok=True)
    model = infinity.checkpoint(settings.model_cache_dir, args.out)
    images = infinity.data_uris(64)
    peer: dict[str, Any] = {"batch_size": args.batch, "engine": "torch"}
    peer |= {"concurrency": args.concurrency, "per_request": args.per_request}
    ours, rounds, idle = [], [], 0.0
    report: dict[str, Any] = {"machine": machine(), "loadavg_start": loadavg()}
    with infinity.infinity_server(args.venv, model, args.batch, args.out / "infinity.log") as srv:
        peer["min_cosine_vs_imagestream"] = _same_model(srv, settings)

        def peer_round(total: int) -> dict[str, Any]:
            return infinity.throughput(srv, images, total, args.concurrency, args.per_request)

        peer_round(args.batch * 2)  # warm-up
        for setting in args.engines:
            rounds.append(peer_round(args.images))
            before = cpu_seconds(srv.pid) or 0.0
            ours.append(_imagestream(args, setting))
            idle += (cpu_seconds(srv.pid) or 0.0) - before
        rounds.append(peer_round(args.images))
    speed = sum(r["images_per_s"] for r in rounds) / len(rounds)
    for row in ours:
        row["vs_infinity"] = (row["e2e_images_per_s"] or 0.0) / speed
        row["bare_vs_infinity"] = row["bare_images_per_s"] / speed
    best = max(ours, key=lambda row: row["e2e_images_per_s"] or 0.0)
    peer |= {"rounds": rounds, "images_per_s": speed, "cpu_s_while_idle": idle}
    return report | {"infinity": peer, "imagestream": ours, "best": best["setting"],
                     "vs_infinity": best["vs_infinity"], "loadavg_end": loadavg()}  # fmt: skip


def summary(report: dict[str, Any], out: Path) -> list[str]:
    """The lines printed at the end; the last is ``vs_infinity=<ratio>``."""
    peer = report["infinity"]
    speeds = " ".join(f"{r['images_per_s']:.1f}" for r in peer["rounds"])
    lines = [
        f"infinity (torch, batch {peer['batch_size']}): {peer['images_per_s']:.1f} images/s "
        f"(rounds {speeds}); same model: min cosine {peer['min_cosine_vs_imagestream']:.5f}"
    ]
    lines += [
        f"imagestream {row['setting']}: e2e {row['e2e_images_per_s'] or 0:.1f} images/s, "
        f"bare {row['bare_images_per_s']:.1f}, vs_infinity {row['vs_infinity']:.3f}"
        for row in report["imagestream"]
    ]
    return [*lines, f"report: {out}", f"vs_infinity={report['vs_infinity']:.3f}"]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    report = run(args)
    out = args.out / "peers.json"
    out.write_text(json.dumps(report, indent=2))
    print("\n".join(summary(report, out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
