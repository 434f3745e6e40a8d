"""consumers/ops/threads.py: pool threads carry their role as OS thread name, and the BLAS
cap reaches numpy's OpenBLAS (each in a fresh interpreter: both are process-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from consumers.ops.threads import named_pool

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
