"""Folders under the model cache, each built once: random-weight presets, exported engines."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_atomically(final: Path, build: Callable[[Path], None]) -> None:
    """``build`` a folder beside ``final``, then rename it there: a racing process sees
    all of it or nothing. Where another process won the race its folder stays (what it
    built is the same)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
