"""CPU batches split over single-threaded workers: shards, thread settings, same vectors."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from time import perf_counter

import numpy as np
import pytest
import torch

from consumers.config.settings import ClipSettings, Settings
from consumers.models.clip import ClipEncoder
from consumers.models.cpu_workers import CpuWorkers, cpu_workers, split, worker_starts
from consumers.pipeline.pools import Pools
from consumers.tasks.caption import CaptionTask
from consumers.tasks.embedding import ClipTask
from tests.models.test_clip_encoder import noise_image


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


def test_a_second_call_takes_the_first_free_worker_and_reports_when() -> None:
    """Shards are served first come, first served across callers: a call made while
    another runs starts on the first worker that frees up, before the other call ends,
    and ``worker_starts`` reports that moment, not when the call was made."""
    workers = cpu_workers(torch.device("cpu"), 2)
    assert workers is not None
    quick_done, release = threading.Event(), threading.Event()
    events: list[str] = []

    def shard(kind: Sequence[str]) -> str:
        if kind[0] == "quick":
            quick_done.set()
        elif kind[0] == "hold":
            assert release.wait(10), "the second call never reached a free worker"
        else:  # "second": the first call's held shard waits for this one
            events.append("second started")
            release.set()
        return kind[0]

    with ThreadPoolExecutor(2) as feed:
        first = feed.submit(workers.map, shard, ["hold", "quick"])
        assert quick_done.wait(10)
        called = perf_counter()
        second = feed.submit(_started_map, workers, shard, ["second", "second"])
        assert first.result(timeout=10) == ["hold", "quick"]
        assert second.result(timeout=10)[0] == ["second", "second"]
    assert events[0] == "second started"
    assert second.result()[1] >= called


def test_worker_starts_is_after_the_shards_waited_for_a_worker() -> None:
    workers = cpu_workers(torch.device("cpu"), 2)
    assert workers is not None
    release = threading.Event()
    released_at: list[float] = []

    def held(shard: Sequence[str]) -> str:
        assert release.wait(10)
        return shard[0]

    with ThreadPoolExecutor(2) as feed:
        first = feed.submit(workers.map, held, ["a", "b"])  # both workers busy
        second = feed.submit(_started_map, workers, lambda shard: shard[0], ["c"])
        threading.Event().wait(0.1)
        released_at.append(perf_counter())
        release.set()
        assert first.result(timeout=10) == ["a", "b"]
        result, started = second.result(timeout=10)
    assert result == ["c"]
    assert started >= released_at[0]  # not when it was called, 0.1 s earlier


def _started_map(
    workers: CpuWorkers, fn: Callable[[Sequence[str]], str], items: list[str]
) -> tuple[list[str], float]:
    with worker_starts() as starts:
        result = workers.map(fn, items)
    assert len(starts) == 1
    return result, starts[0]


@pytest.mark.parametrize("workers", [1, 2])
def test_model_calls_on_cpu_workers_go_through_the_feed_threads(
    tmp_path: Path, workers: int
) -> None:
    clip = ClipSettings(model="random:tiny", device="cpu")
    settings = Settings.model_construct(model_cache_dir=tmp_path, clip=clip, cpu_workers=workers)
    encoder = ClipEncoder(settings.clip, settings)
    pools = Pools.create(decode_threads=1)
    try:
        clip_task, caption_task = ClipTask(encoder, None), CaptionTask(encoder, None)
        assert clip_task.infers_on_cpu_workers == (workers == 2)
        assert pools.model(clip_task) is (pools.feed if workers == 2 else pools.device)
        assert not caption_task.infers_on_cpu_workers  # generate runs on the device thread
        assert pools.model(caption_task) is pools.device
    finally:
        pools.shutdown()
