"""consumers/ops/threads.py: pool threads carry their role as OS thread name, work awaited on
a pool leaves the event loop running, and the BLAS cap reaches numpy's OpenBLAS (in a fresh
interpreter: it is process-wide)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from consumers.ops.threads import named_pool, run_in

PROBE = """
import json, sys
from threadpoolctl import threadpool_info
from consumers.ops.threads import limit_blas_threads
limit_blas_threads(int(sys.argv[1]))
import numpy
print(json.dumps([p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]))
"""


def _blas_threads(cap: int) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(cap)], capture_output=True, text=True, check=True
    ).stdout
    threads: list[int] = json.loads(out)
    return threads


def test_the_blas_cap_binds_numpys_blas_even_before_numpy_was_imported() -> None:
    assert _blas_threads(1) == [1]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core: one thread by default")
def test_zero_leaves_the_librarys_default_of_a_thread_per_core() -> None:
    (threads,) = _blas_threads(0)
    assert threads > 1


@pytest.mark.skipif(sys.platform != "linux", reason="OS thread names are read from /proc")
def test_pool_threads_carry_their_role_as_os_thread_name() -> None:
    def comm() -> str:
        return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()

    with named_pool("decode", 1) as pool:
        assert pool.submit(comm).result() == "decode"


async def test_run_in_runs_on_the_pool_while_the_loop_keeps_running() -> None:
    started, release = threading.Event(), threading.Event()

    def blocking() -> str:
        started.set()
        release.wait(5)
        return threading.current_thread().name

    with named_pool("store", 1) as pool:
        running = asyncio.ensure_future(run_in(pool, blocking))
        # The loop still turns while the pool thread blocks.
        assert await asyncio.wait_for(asyncio.sleep(0.05, "turned"), 1) == "turned"
        assert started.is_set()
        assert not running.done()
        release.set()
        assert (await running).startswith("store")
