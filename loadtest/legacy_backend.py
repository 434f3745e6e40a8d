"""A stand-in for seed 000's backend, for tests and demos: jobs out, callbacks in.

``GET /{model}`` hands out the model's next job as ``{"id", "s3_path",
"img_callback_url"}``, or an empty body when there is none. ``GET /callback/{id}`` (on a
second port, so the callback target can go down on its own) records the JSON body it
is sent. ``GET /files/{name}`` serves registered files and ``GET /redirect/{name}``
redirects, for the download paths of ``s3_path``.

Like the queue behind a real backend (a visibility timeout), a job handed out but not
called back within ``reoffer_after_s`` is handed out again; ``None`` hands out once.
Binds 127.0.0.1 on free ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Callback:
    method: str
    content_type: str
    body: Any


@dataclass
class _Handed:
    model: str
    job: dict[str, str]
    at: float


@dataclass
class LegacyBackend:
    reoffer_after_s: float | None = None
    jobs: dict[str, deque[dict[str, str]]] = field(default_factory=lambda: defaultdict(deque))
    callbacks: dict[str, list[Callback]] = field(default_factory=lambda: defaultdict(list))
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    failing: dict[str, int] = field(default_factory=dict)  # job id -> its callback's status
    added: set[str] = field(default_factory=set)
    handed_out: int = 0
    _handed: dict[str, _Handed] = field(default_factory=dict)
    _runners: dict[str, web.AppRunner] = field(default_factory=dict)
    _ports: dict[str, int] = field(default_factory=dict)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        """The POLLING_URL."""
        return f"http://{HOST}:{self._ports['main']}"

    def callback_url(self, job_id: str) -> str:
        return f"http://{HOST}:{self._ports['callbacks']}/callback/{job_id}"

    def add_job(self, model: str, job_id: str, s3_path: str) -> dict[str, str]:
        job = {"id": job_id, "s3_path": s3_path, "img_callback_url": self.callback_url(job_id)}
        self.jobs[model].append(job)
        self.added.add(job_id)
        return job

    def add_file(self, name: str, data: bytes, content_type: str = "image/jpeg") -> str:
        self.files[name] = (data, content_type)
        return f"{self.url}/files/{name}"

    def add_redirect(self, name: str, target: str) -> str:
        self.redirects[name] = target
        return f"{self.url}/redirect/{name}"

    async def start(self) -> LegacyBackend:
        main = web.Application()
        main.router.add_get("/files/{name}", self._file)
        main.router.add_get("/redirect/{name}", self._redirect)
        main.router.add_get("/{model}", self._poll)
        await self._serve("main", main)
        await self.callbacks_up()
        return self

    async def stop(self) -> None:
        for name in list(self._runners):
            await self._runners.pop(name).cleanup()

    async def callbacks_down(self) -> None:
        """Close the callback port and every open connection to it."""
        await self._runners.pop("callbacks").cleanup()

    async def callbacks_up(self) -> None:
        app = web.Application()
        app.router.add_get("/callback/{job_id}", self._callback)
        await self._serve("callbacks", app)

    async def _serve(self, name: str, app: web.Application) -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, HOST, self._ports.get(name, 0))
        await site.start()
        self._runners[name] = runner
        self._ports[name] = runner.addresses[0][1]

    async def wait_for_callbacks(
        self, job_ids: set[str], timeout_s: float, at_least: int | None = None
    ) -> set[str]:
        """Wait until ``at_least`` (default: all) of ``job_ids`` were called back, or the
        time is up; returns the ids still without a callback. ``job_ids`` may grow."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s

        def short() -> bool:
            wanted = len(job_ids) if at_least is None else at_least
            return len(job_ids & self.callbacks.keys()) < wanted

        while short() and loop.time() < deadline:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(1.0, deadline - loop.time()))
        return job_ids - self.callbacks.keys()

    def _reoffer(self, model: str) -> None:
        if self.reoffer_after_s is None:
            return
        now = time.monotonic()
        for job_id, handed in list(self._handed.items()):
            late = now - handed.at > self.reoffer_after_s
            if handed.model == model and late and job_id not in self.callbacks:
                del self._handed[job_id]
                self.jobs[model].appendleft(handed.job)

    async def _poll(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        self._reoffer(model)
        if not self.jobs[model]:
            return web.Response(body=b"")
        job = self.jobs[model].popleft()
        self._handed[job["id"]] = _Handed(model, job, time.monotonic())
        self.handed_out += 1
        return web.json_response(job)

    async def _callback(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        raw = await request.read()
        body = json.loads(raw) if raw else None
        if job_id in self.failing:
            return web.Response(status=self.failing[job_id], text="failing on purpose")
        self.callbacks[job_id].append(Callback(request.method, request.content_type, body))
        self._handed.pop(job_id, None)
        self._arrived.set()
        return web.Response(text="ok")

    async def _file(self, request: web.Request) -> web.Response:
        found = self.files.get(request.match_info["name"])
        if found is None:
            return web.Response(status=404)
        return web.Response(body=found[0], content_type=found[1])

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(self.redirects[request.match_info["name"]])
