"""The bare encoder next to a bursty background load, as one call on torch's threads
and split over single-threaded CPU workers (``consumers/models/cpu_workers.py``).

    python -m loadtest.interference --model random:vit-b-32 --batch 32 --load 0.27

The background load stands in for the plumbing that shares the cores with the model in
a consumer (event loop, decode, Milvus, the local servers): processes that spin for
2 ms and sleep, ``--load`` cores in all. Each line prints images/s alone and loaded,
and the share of throughput the load cost; a load of L cores on C cores can cost no
less than L / C. Configurations alternate, ``--rounds`` times, so a machine whose speed
drifts treats them alike.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from collections.abc import Callable
from functools import partial
from multiprocessing.synchronize import Event
from typing import Any

from consumers.config.settings import ClipSettings, Settings
from loadtest import bare
from loadtest.synth import photo_jpeg

_BURST_S = 0.002
_SPINNERS = 2


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    for _ in range(args.rounds):
        for workers in (1, 0):
            print(_compare(args, workers), flush=True)


def _compare(args: argparse.Namespace, workers: int) -> str:
    settings = Settings(clip=ClipSettings(model=args.model), cpu_workers=workers)
    encoder = bare.load_encoder(settings, "clip")
    tensors = bare.prepare(encoder, settings, [photo_jpeg(i) for i in range(args.batch)])
    alone = bare.bare_benchmark(encoder, tensors, args.batches)
    loaded = _with_load(args.load, partial(bare.bare_benchmark, encoder, tensors, args.batches))
    lost = 1 - loaded["images_per_s"] / alone["images_per_s"]
    return (
        f"cpu_workers={alone['cpu_workers']}: alone {alone['images_per_s']:.2f} img/s, "
        f"with {args.load:.2f} cores of load {loaded['images_per_s']:.2f} img/s: "
        f"lost {lost:.1%} (floor {args.load / multiprocessing.cpu_count():.1%})"
    )


def _with_load(cores: float, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    stop = multiprocessing.Event()
    duty = cores / _SPINNERS
    spinners = [multiprocessing.Process(target=_spin, args=(duty, stop)) for _ in range(_SPINNERS)]
    for spinner in spinners:
        spinner.start()
    try:
        return run()
    finally:
        stop.set()
        for spinner in spinners:
            spinner.join()


def _spin(duty: float, stop: Event) -> None:
    pause = _BURST_S * (1 - duty) / duty
    while not stop.is_set():
        start = time.perf_counter()
        while time.perf_counter() - start < _BURST_S:
            pass
        time.sleep(pause)


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random:vit-b-32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=5, help="timed batches per measurement")
    parser.add_argument("--load", type=_positive, default=0.27, help="background cores")
    parser.add_argument("--rounds", type=int, default=2)
    return parser


if __name__ == "__main__":
    main()
