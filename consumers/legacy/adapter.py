"""Running the legacy adapter's halves: ``imagestream legacy`` and inside ``imagestream up``.

The poller and the callback sender share nothing but settings and may run in separate
processes (``--only poller`` / ``--only sender``) and as many replicas as wanted: the
senders share one consumer group, and every poller publishes what it was handed. The
sender half also runs the loop that sends failed callbacks again (``resend.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Literal

import aiohttp

from consumers.config.settings import Settings
from consumers.legacy.callbacks import CallbackClient, CallbackSender
from consumers.legacy.poller import Poller
from consumers.legacy.resend import Resender, Resends
from consumers.legacy.sources import SourceResolver
from consumers.legacy.ssrf import AddressGuard, guarded_session, guards
from consumers.ops.signals import stop_event
from consumers.pipeline.s3 import S3Store
from consumers.worker.kafka import make_producer, started

log = logging.getLogger("imagestream.legacy")
Half = Literal["poller", "sender"]
HALVES: tuple[Half, ...] = ("poller", "sender")
# A poller finishes publishing the job in hand; a sender its batch's callbacks. After
# this long they are cancelled: nothing uncommitted is lost, only redone after restart.
STOP_GRACE_S = 10.0


async def _poller(settings: Settings, stack: AsyncExitStack, guard: AddressGuard) -> Poller:
    timeout = aiohttp.ClientTimeout(total=settings.legacy.http_timeout_s)
    polling = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
    downloads = await stack.enter_async_context(
        guarded_session(guard, settings.legacy.http_timeout_s)
    )
    s3 = await stack.enter_async_context(S3Store(settings.s3))
    sources = SourceResolver(settings.s3, settings.legacy, s3, downloads, guard)
    return Poller(settings, await _producer(settings, stack), sources, polling)


async def _sender(
    settings: Settings, stack: AsyncExitStack, guard: AddressGuard
) -> tuple[CallbackSender, Resender]:
    """The callbacks of results, and the loop that sends failed ones again."""
    http = await stack.enter_async_context(guarded_session(guard, settings.legacy.http_timeout_s))
    client = CallbackClient(settings.legacy, http, guard)
    producer = await _producer(settings, stack)
    resender = Resender(settings, Resends(settings, client, producer))
    return CallbackSender(settings, client, producer), resender


async def _producer(settings: Settings, stack: AsyncExitStack) -> Any:
    return await stack.enter_async_context(
        started(make_producer(settings.kafka, "imagestream-legacy"))
    )


def _report_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a legacy adapter half stopped", exc_info=task.exception())


@asynccontextmanager
async def legacy_adapter(
    settings: Settings, halves: tuple[Half, ...] = HALVES
) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run the chosen halves until the context exits; yields their tasks (they end only
    by failing, which the caller should watch for)."""
    downloads, callbacks = guards(settings.legacy)
    stop = asyncio.Event()
    async with AsyncExitStack() as stack:
        runs: list[Coroutine[Any, Any, None]] = []
        if "poller" in halves:
            runs.append((await _poller(settings, stack, downloads)).run(stop))
        if "sender" in halves:
            sender, resender = await _sender(settings, stack, callbacks)
            runs += [sender.run(stop), resender.run(stop)]
        tasks = [asyncio.create_task(run) for run in runs]
        for task in tasks:
            task.add_done_callback(_report_failure)
        try:
            yield tasks
        finally:
            stop.set()
            _, late = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def run_legacy(settings: Settings, halves: tuple[Half, ...] = HALVES) -> None:
    """``imagestream legacy``: until SIGINT/SIGTERM, or until a half fails."""
    stop = stop_event()
    async with legacy_adapter(settings, halves) as tasks:
        await _until_stopped_or_failed(stop, tasks)
    log.info("legacy adapter stopped")


async def _until_stopped_or_failed(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    waiting = asyncio.create_task(stop.wait())
    await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise RuntimeError(f"the legacy adapter stopped: {task.exception()!r}")
