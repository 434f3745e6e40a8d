"""An S3 endpoint in front of the test's moto server that refuses some objects as AWS does.

moto enforces no permissions, so this forwards every request to it over a real socket,
except GETs of objects a role may not read: a key whose file name starts with
``denied-`` answers 403 ``AccessDenied`` (a denied prefix, a KMS key the role may not
use, or a missing key without ``s3:ListBucket``), ``archived-`` answers 403
``InvalidObjectState`` (an object in Glacier).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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


@asynccontextmanager
async def s3_gate(upstream: str) -> AsyncIterator[str]:
    """The gate's endpoint URL while the block runs."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:

        async def forward(request: web.Request) -> web.StreamResponse:
            refused = _refusal(request)
            if refused is not None:
                return refused
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
            async with session.request(
                request.method,
                upstream + request.path_qs,
                headers=headers,
                data=await request.read(),
            ) as answer:
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
            yield f"http://{host}:{port}"
        finally:
            await runner.cleanup()
