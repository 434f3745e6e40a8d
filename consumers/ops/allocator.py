"""Keep the memory a model call frees for the next call, instead of handing it back to
the kernel after every batch.

A forward pass allocates its activations (megabytes each, often more than glibc's 64 MiB
per-thread heap holds at once) and frees them all at the end. glibc then unmaps blocks
over its mmap threshold, trims the top of each heap and deletes heaps that emptied, so
the next batch gets fresh zeroed pages, one page fault per 4 KiB. Measured in the load
test (docs/performance.md): the model threads took 35,500 minor faults/s and 0.09 cores
of kernel time, and a batch of 32 took 6-15% longer than the same call in the bare
benchmark's quieter process. How badly a process is hit depends on what else shares its
heaps, so it changes from run to run, which also made the figures noisier.

Fixed thresholds (which also turn off glibc's own adjustment of them) keep blocks up to
32 MiB in the heap, and up to ``keep_mb`` free at the top of each heap; the top pad keeps
emptied heaps. ``tests/ops/test_allocator.py`` shows the faults gone. The cost is resident
memory that stays mapped after a peak: what a long-running model server wants anyway.
A no-op off glibc (musl, macOS), and with 0.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("imagestream.allocator")

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
# glibc refuses a larger mmap threshold on 64-bit; its per-thread heaps are twice that.
MMAP_THRESHOLD_MAX = 32 << 20
HEAP_MAX = 64 << 20


def retain_freed_memory(keep_mb: int) -> bool:
    """Fix glibc's mmap threshold, trim threshold and top pad; True when all were set."""
    if keep_mb <= 0 or not is_glibc():
        return False
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    keep = keep_mb << 20
    params = (
        (M_MMAP_THRESHOLD, min(keep, MMAP_THRESHOLD_MAX)),
        (M_TRIM_THRESHOLD, keep),
        (M_TOP_PAD, min(keep, HEAP_MAX)),
    )
    accepted = [mallopt(param, value) for param, value in params]  # try every one
    done = all(accepted)
    if not done:
        log.warning("mallopt refused an allocator threshold; glibc's defaults stay")
    return done


def is_glibc() -> bool:
    """Whether this process runs on glibc, whose ``mallopt`` thresholds these are."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):  # no such name here: not glibc
        return False
