"""S3Store against real servers over sockets: moto, plus tiny hand-made misbehaving ones."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from consumers.config.settings import S3Settings
from consumers.pipeline.item_errors import ItemError
from consumers.pipeline.s3 import S3Store, S3Unavailable
from schemas.events import ErrorCode

BUCKET = "images"


def unique_key(suffix: str = ".bin") -> str:
    return f"test/{uuid.uuid4().hex}{suffix}"


def recording(requests: list[str]) -> aiohttp.TraceConfig:
    """aiohttp hooks that append 'METHOD url' (query left off) for each read."""

    async def on_start(_: Any, __: Any, params: aiohttp.TraceRequestStartParams) -> None:
        requests.append(f"{params.method} {params.url.with_query(None)}")

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    return trace


@pytest.fixture
def sent() -> list[str]:
    """Every HTTP request the store sends, as 'METHOD url': botocore's and its reads."""
    return []


@pytest.fixture
async def store(s3_server: S3Settings, sent: list[str]) -> AsyncIterator[S3Store]:
    def record(request: Any, **_: Any) -> None:
        sent.append(f"{request.method} {request.url}")

    async with S3Store(s3_server, http_trace=[recording(sent)]) as s3:
        s3.client.meta.events.register("before-send.s3", record)
        yield s3


async def test_put_get_round_trip(store: S3Store, sent: list[str]) -> None:
    key = unique_key(".jpg")
    payload = bytes(range(256)) * 1000

    await store.put(BUCKET, key, payload, content_type="image/jpeg")

    assert await store.get(BUCKET, key) == payload
    head = await store.client.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentType"] == "image/jpeg"
    assert [line.split()[0] for line in sent] == ["PUT", "GET", "HEAD"]
    assert sent[1].endswith(f"/{BUCKET}/{key}"), "custom endpoints must use path-style URLs"


async def test_empty_object_round_trips(store: S3Store) -> None:
    key = unique_key()
    await store.put(BUCKET, key, b"")
    assert await store.get(BUCKET, key) == b""


async def test_missing_key_is_object_not_found(store: S3Store) -> None:
    key = unique_key()
    with pytest.raises(ItemError) as caught:
        await store.get(BUCKET, key)
    assert caught.value.code is ErrorCode.OBJECT_NOT_FOUND
    assert f"s3://{BUCKET}/{key}" in caught.value.message


async def test_missing_bucket_is_object_not_found(s3_server: S3Settings) -> None:
    settings = s3_server.model_copy(update={"allowed_buckets": [BUCKET, "never-created"]})
    async with S3Store(settings) as s3:
        with pytest.raises(ItemError) as caught:
            await s3.get("never-created", "a.jpg")
    assert caught.value.code is ErrorCode.OBJECT_NOT_FOUND
    assert "no such bucket" in caught.value.message


async def test_disallowed_bucket_is_refused_without_a_request(
    store: S3Store, sent: list[str]
) -> None:
    with pytest.raises(ItemError) as caught:
        await store.get("secrets", "a.jpg")
    assert caught.value.code is ErrorCode.BUCKET_NOT_ALLOWED
    assert "s3://secrets/a.jpg" in caught.value.message
    assert sent == []


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../secrets/a.jpg", "a/../../b", "a/.."])
async def test_path_tricks_are_invalid_events_without_a_request(
    store: S3Store, sent: list[str], key: str
) -> None:
    with pytest.raises(ItemError) as caught:
        await store.get(BUCKET, key)
    assert caught.value.code is ErrorCode.INVALID_EVENT
    assert sent == []


async def test_dots_inside_a_name_are_fine(store: S3Store) -> None:
    key = f"test/{uuid.uuid4().hex}/a..b/..c.jpg"
    await store.put(BUCKET, key, b"ok")
    assert await store.get(BUCKET, key) == b"ok"


async def test_put_refuses_path_tricks(store: S3Store, sent: list[str]) -> None:
    with pytest.raises(ItemError) as caught:
        await store.put(BUCKET, "x/../../y", b"data")
    assert caught.value.code is ErrorCode.INVALID_EVENT
    assert sent == []


async def test_object_at_the_cap_is_read(s3_server: S3Settings) -> None:
    settings = s3_server.model_copy(update={"max_object_bytes": 1000})
    key = unique_key()
    async with S3Store(settings) as s3:
        await s3.put(BUCKET, key, b"x" * 1000)
        assert len(await s3.get(BUCKET, key)) == 1000


async def test_declared_size_over_the_cap_is_refused_before_reading(
    s3_server: S3Settings,
) -> None:
    settings = s3_server.model_copy(update={"max_object_bytes": 1000})
    key = unique_key()
    async with S3Store(settings) as s3:
        await s3.put(BUCKET, key, b"x" * 1001)
        with pytest.raises(ItemError) as caught:
            await s3.get(BUCKET, key)
    assert caught.value.code is ErrorCode.IMAGE_TOO_LARGE
    # The declared length refused it; a body read would have said "stopped reading".
    assert caught.value.message.endswith("is 1,001 bytes, over the limit of 1,000")


async def test_concurrency_is_bounded(s3_server: S3Settings) -> None:
    settings = s3_server.model_copy(update={"max_concurrency": 3})
    keys = [unique_key() for _ in range(10)]
    in_flight = peak = 0

    async def on_start(*_: Any) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)  # slow every read down, so that they would pile up

    async def on_end(*_: Any) -> None:
        nonlocal in_flight
        in_flight -= 1

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    trace.on_request_end.append(on_end)
    async with S3Store(settings, http_trace=[trace]) as s3:
        await asyncio.gather(*(s3.put(BUCKET, key, key.encode()) for key in keys))
        bodies = await asyncio.gather(*(s3.get(BUCKET, key) for key in keys))
    assert bodies == [key.encode() for key in keys]
    assert peak == 3


async def test_ensure_bucket_creates_once_and_is_idempotent(store: S3Store) -> None:
    bucket = f"made-{uuid.uuid4().hex[:12]}"
    await asyncio.gather(store.ensure_bucket(bucket), store.ensure_bucket(bucket))
    await store.ensure_bucket(bucket)
    await store.put(bucket, "k", b"v")
    listed = await store.client.list_buckets()
    assert [b["Name"] for b in listed["Buckets"]].count(bucket) == 1


async def test_put_into_a_missing_bucket_names_it(store: S3Store) -> None:
    with pytest.raises(ItemError) as caught:
        await store.put("never-created", "k", b"v")
    assert caught.value.code is ErrorCode.OBJECT_NOT_FOUND
    assert "s3://never-created/k" in caught.value.message


def test_credentials_stay_out_of_repr(s3_server: S3Settings) -> None:
    settings = s3_server.model_copy(update={"secret_access_key": SecretStr("hunter2-secret")})
    text = repr(S3Store(settings))
    assert "hunter2" not in text
    assert s3_server.endpoint_url is not None
    assert s3_server.endpoint_url in text


def test_half_configured_credentials_are_refused() -> None:
    with pytest.raises(ValueError, match="both"):
        S3Store(S3Settings(access_key_id=SecretStr("id-only")))


def test_client_before_start_is_a_clear_error(s3_server: S3Settings) -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = S3Store(s3_server).client


# --- S3 unavailable (nothing listening, no answer, 5xx, refused credentials), or this
# object's error (an object-level 403) ------------------------------------------------


def fast_failing(settings: S3Settings, endpoint: str) -> S3Settings:
    return settings.model_copy(
        update={"endpoint_url": endpoint, "connect_timeout_s": 0.5, "read_timeout_s": 0.5}
    )


@pytest.fixture
def refused_endpoint() -> Iterator[str]:
    """A port that refuses connections; holding it bound keeps anyone else off it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """Accepts connections (kernel backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_server_down_is_s3_unavailable_quickly(
    s3_server: S3Settings, refused_endpoint: str
) -> None:
    started = time.monotonic()
    async with S3Store(fast_failing(s3_server, refused_endpoint), max_attempts=1) as s3:
        with pytest.raises(S3Unavailable, match=f"s3://{BUCKET}/a.jpg"):
            await s3.get(BUCKET, "a.jpg")
    assert time.monotonic() - started < 5


async def test_server_that_never_answers_times_out_as_s3_unavailable(
    s3_server: S3Settings, silent_endpoint: str
) -> None:
    started = time.monotonic()
    async with S3Store(fast_failing(s3_server, silent_endpoint), max_attempts=1) as s3:
        with pytest.raises(S3Unavailable):
            await s3.get(BUCKET, "a.jpg")
    assert time.monotonic() - started < 5


class FakeS3:
    """An HTTP server that answers GETs the way a misbehaving S3 might."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes_sent = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        key = request.match_info["key"]
        if key.startswith("status-"):
            # status-403, status-503, or status-403-<S3 error code>
            status_text, _, code = key.removeprefix("status-").partition("-")
            status = int(status_text)
            code = code or {403: "AccessDenied", 503: "SlowDown"}[status]
            body = f"<Error><Code>{code}</Code><Message>nope</Message></Error>"
            return web.Response(status=status, text=body, content_type="application/xml")
        if key == "dropped":
            # Promises 1000 bytes, sends 10, hangs up.
            response = web.StreamResponse(headers={"Content-Length": "1000"})
            await response.prepare(request)
            await response.write(b"\xff" * 10)
            assert request.transport is not None
            request.transport.close()
            return response
        # "chunked": no Content-Length, and far more bytes than any cap.
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b"\xff" * 65536
        for _ in range(4096):  # 256 MiB if nobody stops reading
            await response.write(chunk)
            self.bytes_sent += len(chunk)
        return response


@pytest.fixture
async def fake_s3() -> AsyncIterator[tuple[FakeS3, str]]:
    fake = FakeS3()
    app = web.Application()
    app.router.add_get("/{bucket}/{key:.+}", fake.handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield fake, f"http://{host}:{port}"
    await runner.cleanup()


async def test_chunked_body_over_the_cap_stops_early(
    s3_server: S3Settings, fake_s3: tuple[FakeS3, str]
) -> None:
    fake, endpoint = fake_s3
    settings = s3_server.model_copy(
        update={"endpoint_url": endpoint, "max_object_bytes": 1024 * 1024}
    )
    async with S3Store(settings, max_attempts=1) as s3:
        with pytest.raises(ItemError) as caught:
            await s3.get(BUCKET, "chunked.jpg")
    assert caught.value.code is ErrorCode.IMAGE_TOO_LARGE
    assert fake.bytes_sent < 64 * 1024 * 1024, "the reader must hang up, not drain"


async def test_connection_dropped_mid_body_is_s3_unavailable_not_a_short_image(
    s3_server: S3Settings, fake_s3: tuple[FakeS3, str]
) -> None:
    _, endpoint = fake_s3
    async with S3Store(fast_failing(s3_server, endpoint), max_attempts=1) as s3:
        with pytest.raises(S3Unavailable, match="s3://images/dropped"):
            await s3.get(BUCKET, "dropped")


async def test_5xx_is_s3_unavailable_after_client_retries(
    s3_server: S3Settings, fake_s3: tuple[FakeS3, str]
) -> None:
    fake, endpoint = fake_s3
    async with S3Store(fast_failing(s3_server, endpoint), max_attempts=2) as s3:
        with pytest.raises(S3Unavailable, match="SlowDown"):
            await s3.get(BUCKET, "status-503")
    assert fake.requests == 2


@pytest.mark.parametrize(
    "key",
    [
        "status-403",  # a denied key or prefix; also a missing key without s3:ListBucket
        "status-403-InvalidObjectState",  # archived (Glacier)
        "status-403-KMS.DisabledException",
        "status-400-KMS.KMSInvalidStateException",
    ],
)
async def test_object_level_denial_is_an_item_error_not_an_outage(
    s3_server: S3Settings, fake_s3: tuple[FakeS3, str], key: str
) -> None:
    fake, endpoint = fake_s3
    async with S3Store(fast_failing(s3_server, endpoint), max_attempts=3) as s3:
        with pytest.raises(ItemError) as caught:
            await s3.get(BUCKET, key)
    assert caught.value.code is ErrorCode.OBJECT_NOT_FOUND
    assert f"s3://{BUCKET}/{key}" in caught.value.message
    assert fake.requests == 1, "an item error is not retried"


@pytest.mark.parametrize("code", ["InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"])
async def test_refused_credentials_are_s3_unavailable(
    s3_server: S3Settings, fake_s3: tuple[FakeS3, str], code: str
) -> None:
    _, endpoint = fake_s3
    async with S3Store(fast_failing(s3_server, endpoint), max_attempts=1) as s3:
        with pytest.raises(S3Unavailable, match=f"credentials.*{code}"):
            await s3.get(BUCKET, f"status-403-{code}")


async def test_one_read_ends_within_its_deadline_whatever_the_socket_timeouts(
    s3_server: S3Settings, silent_endpoint: str
) -> None:
    # Socket timeouts of 10 s and three attempts would take 30 s against a silent S3.
    settings = s3_server.model_copy(
        update={"endpoint_url": silent_endpoint, "read_timeout_s": 10.0, "request_timeout_s": 0.5}
    )
    started = time.monotonic()
    async with S3Store(settings, max_attempts=3) as s3:
        with pytest.raises(S3Unavailable, match=r"no answer in 0\.5 s"):
            await s3.get(BUCKET, "a.jpg")
    assert time.monotonic() - started < 3
