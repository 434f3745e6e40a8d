"""CPU batches split over single-threaded workers: shards, thread settings, same vectors."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from consumers.encoders.clip import ClipEncoder
from consumers.encoders.cpu_workers import cpu_workers, split
from consumers.settings import ClipSettings, Settings
from tests.test_clip_encoder import noise_image


@pytest.mark.parametrize(
    ("length", "parts", "sizes"),
    [(32, 2, [16, 16]), (5, 2, [3, 2]), (7, 3, [3, 2, 2]), (2, 4, [1, 1]), (1, 2, [1])],
)
def test_split_gives_contiguous_near_equal_shards(
    length: int, parts: int, sizes: list[int]
) -> None:
    items = list(range(length))
    shards = split(items, parts)
    assert [len(shard) for shard in shards] == sizes
    assert [item for shard in shards for item in shard] == items


def test_no_workers_on_an_accelerator_or_when_one_is_asked_for() -> None:
    assert cpu_workers(torch.device("cuda"), 0) is None
    assert cpu_workers(torch.device("meta"), 4) is None
    assert cpu_workers(torch.device("cpu"), 1) is None


def test_workers_run_torch_on_one_thread_and_leave_the_default_alone() -> None:
    before = torch.get_num_threads()
    workers = cpu_workers(torch.device("cpu"), 3)
    assert workers is not None
    assert workers.count == 3
    assert cpu_workers(torch.device("cpu"), 3) is workers  # one pool per process

    seen: list[int] = []
    barrier = threading.Barrier(3, timeout=10)

    def threads_in_worker(_: object) -> int:
        barrier.wait()  # all three shards at once: three distinct worker threads
        return torch.get_num_threads()

    assert workers.map(threads_in_worker, [0, 1, 2]) == [1, 1, 1]
    assert torch.get_num_threads() == before
    # A thread started now still copies the process default, not the workers' 1.
    fresh = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    fresh.start()
    fresh.join()
    assert seen == [before]


def test_split_batch_gives_the_vectors_of_one_call(tmp_path: Path) -> None:
    tensors = None
    vectors = []
    for workers in (1, 3):
        clip = ClipSettings(model="random:tiny", device="cpu")
        settings = Settings.model_construct(
            model_cache_dir=tmp_path, clip=clip, cpu_workers=workers
        )
        encoder = ClipEncoder(settings.clip, settings)
        encoder.load()
        assert (encoder.cpu_workers() is None) == (workers == 1)
        tensors = tensors or [encoder.preprocess(noise_image(i)) for i in range(7)]
        vectors.append(encoder.encode_images(tensors))
    assert vectors[1].shape == (7, 32)
    np.testing.assert_allclose(vectors[1], vectors[0], atol=1e-5)
