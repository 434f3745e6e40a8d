"""Named thread pools: every pool thread carries its role as its OS thread name.

Linux shows the name in ``top -H`` and ``/proc/<pid>/task/*/comm``, and threads a pool
thread starts (the model's OpenMP workers) inherit it, so the load test and an operator
can say which role used the CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


def named_pool(
    name: str, threads: int, setup: Callable[[], None] | None = None
) -> ThreadPoolExecutor:
    """A pool of ``threads`` threads named ``name``; each runs ``setup`` when it starts."""
    return ThreadPoolExecutor(threads, name, initializer=_start_thread, initargs=(name, setup))


def name_native_thread(name: str) -> None:
    """Name the calling OS thread (first 15 bytes; a no-op off Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


def _start_thread(name: str, setup: Callable[[], None] | None) -> None:
    name_native_thread(name)
    if setup is not None:
        setup()
