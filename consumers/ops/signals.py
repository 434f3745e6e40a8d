"""Shutdown on SIGINT/SIGTERM, importable by light processes (gateway, legacy adapter)."""

from __future__ import annotations

import asyncio
import signal


def stop_event() -> asyncio.Event:
    """Set on SIGINT or SIGTERM, so every command shuts down the same clean way."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, event.set)
    return event
