"""The bare encoder benchmark: the consumer's model call alone, on tensors in memory.

Same encoder class, model spec, device and batch size as the consumer, and the same call
the pipeline's infer step makes (``Encoder.encode_images``: collate, forward,
normalise), on images that are already fetched, decoded and preprocessed. Nothing else
runs meanwhile, so this is the ceiling the pipeline is measured against.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from time import perf_counter
from typing import Any

import torch

from consumers.config.settings import Settings
from consumers.models.encoder import Encoder
from consumers.models.registry import make_encoder
from consumers.pipeline.decode import decode_image
from loadtest.consumer import self_cpu_seconds
from loadtest.stats import percentiles


def load_encoder(settings: Settings, task: str = "clip") -> Encoder:
    encoder = make_encoder(task, settings)
    encoder.load()
    return encoder


def prepare(encoder: Encoder, settings: Settings, images: Sequence[bytes]) -> list[torch.Tensor]:
    """What the pipeline's decode pool hands the model: decoded, preprocessed tensors."""
    return [encoder.preprocess(decode_image(data, settings.decode)) for data in images]


def bare_benchmark(
    encoder: Encoder, tensors: list[torch.Tensor], batches: int, warmup: int = 1
) -> dict[str, Any]:
    """Images/s over ``batches`` timed calls of ``len(tensors)`` images each, after
    ``warmup`` untimed ones (the first call pays for lazy init and allocator growth).

    ``service_ms`` is the median time of one call: the service time of one batch.
    """
    if batches < 1 or not tensors:
        raise ValueError("need at least one timed batch of at least one image")
    for _ in range(warmup):
        encoder.encode_images(tensors)
    times = []
    started, cpu_start = time.time(), self_cpu_seconds()
    for _ in range(batches):
        start = perf_counter()
        encoder.encode_images(tensors)
        times.append(perf_counter() - start)
    cpu = self_cpu_seconds() - cpu_start
    gc.collect()
    return {
        "model": encoder.model_name,
        "device": str(encoder.device),
        "dtype": str(encoder.dtype).removeprefix("torch."),
        "batch": len(tensors),
        "batches": batches,
        "torch_threads": torch.get_num_threads(),
        "cpu_workers": workers.count if (workers := encoder.cpu_workers()) else 1,
        "images_per_s": len(tensors) * batches / sum(times),
        # CPU time is far less sensitive than wall time to other work on a shared machine.
        "images_per_cpu_s": len(tensors) * batches / cpu if cpu > 0 else None,
        "batch_ms": percentiles(t * 1000 for t in times),
        "service_ms": sorted(times)[len(times) // 2] * 1000,
        "started": started,  # wall clock, for the plots
        "finished": time.time(),
    }


def bracket(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The bare runs measured around the consumer's saturation rounds, averaged.

    A shared or virtual machine's speed drifts over minutes (one run here measured a
    batch at 1.75 s, another at 2.46 s, both at load average < 1), so the bare encoder
    runs before the first round, between rounds and after the last (``runs``, in that
    order); each round is judged against the two runs beside it (``report.verdicts``).
    ``drift`` is how far the machine moved from the first run to the last, ``spread``
    the largest run over the smallest.
    """
    if not runs:
        raise ValueError("no bare runs to average")
    averaged = {
        key: sum(run[key] for run in runs) / len(runs)
        for key in ("images_per_s", "images_per_cpu_s", "service_ms")
        if all(run.get(key) is not None for run in runs)
    }
    speeds = [run["images_per_s"] for run in runs]
    # Percentiles do not average: each run's batch_ms stays under runs only.
    common = {
        key: value
        for key, value in runs[0].items()
        if key not in ("batch_ms", "started", "finished")
    }
    return (
        common
        | averaged
        | {
            "runs": list(runs),
            "drift": speeds[-1] / speeds[0] - 1,
            "spread": max(speeds) / min(speeds) - 1,
        }
    )
