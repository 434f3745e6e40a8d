"""Exponential backoff and stop-aware pauses, shared by the adapter's retry loops."""

from __future__ import annotations

import asyncio
import contextlib
import random


def backoff_s(attempt: int, first_s: float, max_s: float, *, jitter: bool = True) -> float:
    """The pause after failed attempt ``attempt`` (1-based): ``first_s`` doubling up to
    ``max_s``, jittered ±20% so that many waiters do not retry in step."""
    delay = min(first_s * 2.0 ** (attempt - 1), max_s)
    return delay * random.uniform(0.8, 1.2) if jitter else delay


async def pause(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``stop`` is set; True when stopped."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
