"""The allocator setting: why it exists (glibc hands a forward pass's freed activations
back to the kernel, and the next pass faults them in again) and that it stops that."""

from __future__ import annotations

import subprocess
import sys

import pytest

from consumers.config.settings import Settings
from consumers.ops.allocator import is_glibc, retain_freed_memory

# What a ViT forward pass does to memory, in a worker thread as the model runs: 12
# layers of activations (0.3-9.8 MiB, the sizes of ViT-B/32 at 16 images), a third of
# them alive to the end (over 100 MiB, more than one 64 MiB glibc heap), then all freed.
# Prints the minor page faults of 10 passes after 3 warm-up ones, in that thread.
FORWARD_PASSES = """
import resource, sys, threading
import numpy as np
from consumers.ops.allocator import retain_freed_memory
retain_freed_memory(int(sys.argv[1]))
SIZES = [int(mib * (1 << 20)) // 4 for mib in (0.3, 2.4, 9.8, 9.8, 2.4, 1.2)]

def passes(count):
    for _ in range(count):
        alive = []
        for layer in range(12):
            for size in SIZES:
                block = np.ones(size, dtype=np.float32)
                if layer % 3 == 0:
                    alive.append(block)
        del alive

def run():
    # One thread for warm-up and measurement, as the model's device thread is: a fresh
    # thread may start before the last one's exit has handed its heap back, and then
    # glibc gives it a new, empty heap whatever the thresholds say.
    passes(3)
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    passes(10)
    print(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

worker = threading.Thread(target=run)
worker.start()
worker.join()
"""

glibc_only = pytest.mark.skipif(not is_glibc(), reason="the thresholds are glibc's")


def _faults(keep_mb: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", FORWARD_PASSES, str(keep_mb)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return int(out.stdout.split()[-1])


@glibc_only
def test_glibc_defaults_fault_the_freed_activations_in_again() -> None:
    # 10 passes of ~300 MiB allocated: tens of thousands of fresh pages.
    assert _faults(0) > 10_000


@glibc_only
def test_kept_memory_serves_the_next_passes_without_faults() -> None:
    assert _faults(256) < 500


def test_zero_leaves_the_allocator_alone() -> None:
    assert retain_freed_memory(0) is False


def test_the_setting_keeps_memory_by_default() -> None:
    assert Settings().malloc_keep_mb > 0
