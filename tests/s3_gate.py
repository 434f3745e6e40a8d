"""An S3 endpoint in front of the test's moto server that refuses some objects as AWS does.

moto enforces no permissions, so this forwards every request to it over a real socket,
except GETs of objects a role may not read: a key whose file name starts with
``denied-`` answers 403 ``AccessDenied`` (a denied prefix, a KMS key the role may not
use, or a missing key without ``s3:ListBucket``), ``archived-`` answers 403
``InvalidObjectState`` (an object in Glacier). ``Gate.hang()`` makes every request
wait unanswered (an S3 that accepts connections and never answers) until ``resume()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

REFUSALS = {"denied-": "AccessDenied", "archived-": "InvalidObjectState"}
_HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


def _refusal(request: web.Request) -> web.Response | None:
    name = request.path.rsplit("/", 1)[-1]
    for prefix, code in REFUSALS.items():
        if request.method == "GET" and name.startswith(prefix):
            body = f"<Error><Code>{code}</Code><Message>refused by the gate</Message></Error>"
            return web.Response(status=403, text=body, content_type="application/xml")
    return None


@dataclass
class Gate:
    url: str = ""
    _answering: asyncio.Event = field(default_factory=asyncio.Event)

    def hang(self) -> None:
        self._answering.clear()

    def resume(self) -> None:
        self._answering.set()


@asynccontextmanager
async def s3_gate(upstream: str) -> AsyncIterator[Gate]:
    """The gate, answering, while the block runs."""
    gate = Gate()
    gate.resume()
    async with aiohttp.ClientSession(auto_decompress=False) as session:

        async def forward(request: web.Request) -> web.StreamResponse:
            await gate._answering.wait()
            refused = _refusal(request)
            if refused is not None:
                return refused
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
            url, data = upstream + request.path_qs, await request.read()
            async with session.request(request.method, url, headers=headers, data=data) as answer:
                body = await answer.read()
                kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_HEADERS}
                return web.Response(status=answer.status, body=body, headers=kept)

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", forward)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            host, port = runner.addresses[0][:2]
            gate.url = f"http://{host}:{port}"
            yield gate
        finally:
            gate.resume()  # requests still waiting finish, so that the server can stop
            await runner.cleanup()
