"""Threads: named pools, work awaited on them, and a cap on numpy's BLAS threads.

Every pool thread carries its role as its OS thread name. Linux shows the name in
``top -H`` and ``/proc/<pid>/task/*/comm``, and threads a pool thread starts (the
model's OpenMP workers) inherit it, so the load test and an operator can say which role
used the CPU.

numpy's OpenBLAS starts a worker per core and, after each call, keeps them spinning for
the next one. In a consumer the callers are Milvus searches and upserts on the store
thread (milvus-lite searches with numpy): small products that gain nothing from a
second thread, while the spinning worker took 0.036 cores, 2.3 ms of CPU per image,
from the model in the load test (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TypeVar

from threadpoolctl import threadpool_limits

T = TypeVar("T")


def named_pool(
    name: str, threads: int, setup: Callable[[], None] | None = None
) -> ThreadPoolExecutor:
    """A pool of ``threads`` threads named ``name``; each runs ``setup`` when it starts."""
    return ThreadPoolExecutor(threads, name, initializer=_start_thread, initargs=(name, setup))


def limit_blas_threads(threads: int) -> None:
    """Cap the BLAS libraries numpy loaded at ``threads`` each (0: leave them be)."""
    if threads > 0:
        importlib.import_module("numpy")  # the cap binds the libraries loaded so far
        threadpool_limits(threads, user_api="blas")


def name_native_thread(name: str) -> None:
    """Name the calling OS thread (first 15 bytes; a no-op off Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


def _start_thread(name: str, setup: Callable[[], None] | None) -> None:
    name_native_thread(name)
    if setup is not None:
        setup()


async def run_in(executor: Executor, fn: Callable[[], T]) -> T:
    """``fn()`` on one of ``executor``'s threads, awaited: the event loop keeps running."""
    return await asyncio.get_running_loop().run_in_executor(executor, fn)
