"""The legacy adapter's outbound HTTP against real local servers: redirect hops are held
to the download host allow-list, downloads and callbacks have separate networks, and no
URL signature reaches a message, a log line or a callback error, whatever aiohttp says."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from consumers.config.settings import LegacySettings, S3Settings, Settings
from consumers.legacy.callbacks import CallbackClient
from consumers.legacy.poller import Poller
from consumers.legacy.sources import SourceResolver, SourceUnavailable
from consumers.legacy.ssrf import Refused, guarded_session, guards
from consumers.ops.redact import redact_text, redact_url
from consumers.pipeline.item_errors import ItemError
from consumers.pipeline.s3 import S3Store
from schemas.events import ErrorCode
from tests.stack_settings import small_jpegs

SECRET = "SIGNATUREdeadbeef"
SIGNED = f"?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature={SECRET}"
LOOPBACK = LegacySettings(
    allowed_hosts=["127.0.0.1"], download_networks=["127.0.0.0/8"], http_timeout_s=5
)


@pytest.fixture
async def web_server() -> AsyncIterator[int]:
    """/img: a JPEG; /same: a redirect to /img on 127.0.0.1; /off: to the same server
    under another name (localhost: the same address, but not an allowed host)."""
    app = web.Application()
    image = small_jpegs(1, 3)[0]

    async def img(_: web.Request) -> web.Response:
        return web.Response(body=image, content_type="image/jpeg")

    async def same(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{request.url.port}/img")

    async def off(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://localhost:{request.url.port}/img")

    app.router.add_get("/img", img)
    app.router.add_get("/same", same)
    app.router.add_get("/off", off)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


@pytest.fixture
async def garbage_server() -> AsyncIterator[int]:
    """Answers every request with bytes that are not HTTP: aiohttp's error then carries
    the request URL (``ClientResponseError``: ``url=URL('...')``)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_every_redirect_hop_is_held_to_the_host_allow_list(
    web_server: int, s3_server: S3Settings
) -> None:
    downloads, _ = guards(LOOPBACK)
    async with S3Store(s3_server) as s3, guarded_session(downloads, 5) as http:
        sources = SourceResolver(s3_server, LOOPBACK, s3, http, downloads)
        with pytest.raises(ItemError, match=r"'localhost' is not in legacy\.allowed_hosts") as hop:
            await sources.resolve(f"http://127.0.0.1:{web_server}/off", "clip", "j1")
        assert hop.value.code == ErrorCode.SOURCE_NOT_ALLOWED
        # The same redirect within the allowed host is followed and staged, untenanted.
        uri = await sources.resolve(f"http://127.0.0.1:{web_server}/same", "clip", "j/2")
        assert uri == f"s3://{s3_server.bucket}/legacy/shared/clip/j%2F2"


async def test_networks_opened_for_callbacks_are_closed_to_downloads(web_server: int) -> None:
    downloads, callbacks = guards(LegacySettings(callback_networks=["127.0.0.0/8"]))
    url = f"http://127.0.0.1:{web_server}/img"
    async with guarded_session(downloads, 5) as http:
        with pytest.raises(Refused, match="loopback"):
            await http.get(f"http://localhost:{web_server}/img")
    async with guarded_session(callbacks, 5) as http:
        client = CallbackClient(LegacySettings(callback_attempts=1), http, callbacks)
        assert (await client.send(url, {"ok": True})).delivered


async def test_a_forced_aiohttp_error_shows_no_signature(
    garbage_server: int, s3_server: S3Settings, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{garbage_server}/photo.jpg{SIGNED}"
    downloads, callbacks = guards(
        LOOPBACK.model_copy(update={"callback_networks": ["127.0.0.0/8"]})
    )
    caplog.set_level(logging.DEBUG)
    async with S3Store(s3_server) as s3, guarded_session(downloads, 5) as http:
        raw = None
        try:
            await http.get(url)
        except aiohttp.ClientError as exc:
            raw = repr(exc)
        assert raw is not None
        assert SECRET in raw
        sources = SourceResolver(s3_server, LOOPBACK, s3, http, downloads)
        with pytest.raises(SourceUnavailable) as failed:
            await sources.resolve(url, "clip", "j3")
        assert SECRET not in str(failed.value)
        assert f"127.0.0.1:{garbage_server}/photo.jpg?REDACTED" in str(failed.value)
        assert failed.value.__cause__ is None
        assert failed.value.__suppress_context__
        logging.getLogger("imagestream.test").exception("as a handler would", exc_info=failed.value)
        poller = Poller(Settings(_env_file=None, legacy=LOOPBACK), None, sources, http)  # type: ignore[arg-type]
        assert await poller.poll(url) is None  # logs the failure, at WARNING
    async with guarded_session(callbacks, 5) as http:
        client = CallbackClient(LegacySettings(callback_attempts=1), http, callbacks)
        outcome = await client.send(url, {"ok": True})
    assert not outcome.delivered
    assert SECRET not in outcome.error
    assert "REDACTED" in outcome.error
    logged = "\n".join(caplog.text.splitlines())
    assert "poll http://127.0.0.1" in logged
    assert SECRET not in logged


def test_redaction_drops_queries_credentials_and_fragments() -> None:
    assert (
        redact_url("https://u:p@h.example:8443/a/b.jpg?sig=1#f")
        == "https://h.example:8443/a/b.jpg?REDACTED"
    )
    assert redact_url("s3://images/a.jpg") == "s3://images/a.jpg"
    assert redact_url("http://[::1/x?sig=1") == "http://[::1/x?REDACTED"
    text = "ClientResponseError(url=URL('http://h/x?sig=1&b=2'), other='https://a:b@c/d')"
    assert (
        redact_text(text)
        == "ClientResponseError(url=URL('http://h/x?REDACTED'), other='https://c/d')"
    )
