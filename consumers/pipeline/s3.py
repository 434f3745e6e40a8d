"""The S3 reader (and the small writer the ingest CLI and the embedded stack need).

One ``S3Store`` holds one aiobotocore client and one aiohttp session for the life of the
process (clients are slow to create) and a semaphore that bounds concurrent requests
across every caller.

Reads, the hot path, go around botocore's request machinery: the GET is presigned
(``consumers/pipeline/presign.py``: each bucket's URL learned from botocore once, so
credentials, their refresh, endpoint, region and addressing stay botocore's, and each
key signed with botocore's own signer) and the plain aiohttp session fetches it.
Measured against the local S3 server (``python -m loadtest.s3_bench``,
docs/performance.md): about 1 ms of event-loop CPU per GET with botocore presigning
each one, 1.8-2.1 ms through ``get_object``, the largest cost on the consumer's event
loop and what caps how many images/s one loop can feed a GPU; the presigner takes 0.5
ms of that 1 ms down to 0.05.

Failures come out in two kinds, because the pipeline treats them differently:

- ``ItemError``: this event cannot be served, retrying will not help. Bucket not
  allowed (``BUCKET_NOT_ALLOWED``), a key that is not a plain object path
  (``INVALID_EVENT``: the producer sent a bad URI), no such key or bucket and other
  object-specific 4xx answers (``OBJECT_NOT_FOUND``), object-level denials (403
  ``AccessDenied``, ``KMS.*``, ``InvalidObjectState``: also ``OBJECT_NOT_FOUND``, the
  message says which), over the byte cap (``IMAGE_TOO_LARGE``).
- ``S3Unavailable``: S3 itself cannot be used right now (connection refused, no answer
  within ``request_timeout_s``, 5xx, throttling, missing or refused credentials); not
  the item's fault, so the pipeline retries the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

import aioboto3
import aiohttp
import yarl
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from consumers.pipeline.item_errors import ItemError
from consumers.pipeline.presign import Presigner
from consumers.pipeline.s3_errors import (
    S3Unavailable,
    error_code,
    error_response,
    from_client_error,
)

__all__ = ["S3Store", "S3Unavailable"]
from consumers.config.settings import S3Settings
from schemas.events import ErrorCode

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client

T = TypeVar("T")

DEFAULT_MAX_ATTEMPTS = 3
# A presigned GET is used at once; the margin covers clock skew, not waiting.
PRESIGN_EXPIRES_S = 300
_RETRY_BACKOFF_S = 0.1  # doubled per attempt; the pipeline's own retries are longer
_CHUNK_BYTES = 1024 * 1024
_MAX_KEY_BYTES = 1024  # S3's own limit
# Reads use the aiohttp session's pool; botocore's serves put() (bounded by the
# semaphore) and ensure_bucket() (not), which should not queue behind a full pool.
_SPARE_CONNECTIONS = 4
# Errors on the way to S3 or while the body streams; whatever aiobotocore did not wrap
# in a botocore exception surfaces as aiohttp/OS/timeout errors.
_TRANSPORT_ERRORS = (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError)
_NOT_STARTED = "S3Store is not started: use `async with S3Store(...)` or start()"


class S3Store:
    """``async with S3Store(settings) as s3: data = await s3.get(bucket, key)``."""

    def __init__(
        self,
        settings: S3Settings,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        http_trace: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        """``max_attempts``: tries per request, the first included (1 = no retry). Kept
        small: the pipeline retries whole batches on ``S3Unavailable``. ``http_trace``:
        aiohttp hooks on every read (tracing, metrics, tests)."""
        if (settings.access_key_id is None) != (settings.secret_access_key is None):
            raise ValueError("set both S3 access_key_id and secret_access_key, or neither")
        self._settings = settings
        self._max_attempts = max_attempts
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self._http_trace = list(http_trace)
        self._stack: AsyncExitStack | None = None
        self._client: S3Client | None = None
        self._http: aiohttp.ClientSession | None = None
        self._presigner: Presigner | None = None

    def __repr__(self) -> str:
        # Deliberately without the settings object: credentials never reach a log line.
        endpoint = self._settings.endpoint_url or "AWS"
        return f"S3Store(endpoint={endpoint!r}, region={self._settings.region!r})"

    async def start(self) -> None:
        """Open the client; a second call is a no-op."""
        if self._client is not None:
            return
        settings = self._settings
        key_id, secret = settings.access_key_id, settings.secret_access_key
        # Without explicit keys (None), boto's default chain (env, profile, role) applies.
        session = aioboto3.Session(
            aws_access_key_id=key_id.get_secret_value() if key_id else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            region_name=settings.region,
        )
        async with AsyncExitStack() as stack:  # what opened is closed if the rest fails
            client = await stack.enter_async_context(
                session.client("s3", endpoint_url=settings.endpoint_url, config=self._config())
            )
            http = await stack.enter_async_context(self._http_session())
            # The credentials the client resolved (cached by the session): None when
            # there are none, and then botocore's presigner raises as it always did.
            credentials = await cast(Awaitable[Any], session.get_credentials())  # stub: sync
            self._presigner = Presigner(client, credentials, PRESIGN_EXPIRES_S)
            self._client, self._http, self._stack = client, http, stack.pop_all()

    async def close(self) -> None:
        """Close the client, the session and their connection pools; a second call is a
        no-op."""
        stack, self._stack, self._client, self._http = self._stack, None, None, None
        self._presigner = None
        if stack is not None:
            await stack.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def client(self) -> S3Client:
        """The underlying aiobotocore client (not bounded by the semaphore)."""
        if self._client is None:
            raise RuntimeError(_NOT_STARTED)
        return self._client

    async def get(self, bucket: str, key: str) -> bytes:
        """The object's bytes, at most ``max_object_bytes`` of them. The whole call (the
        wait for a connection slot, every attempt, the body) ends within
        ``request_timeout_s``: an S3 that accepts connections and never answers costs a
        batch that long, not each read's socket timeouts over and over."""
        uri = f"s3://{bucket}/{key}"
        if bucket not in self._settings.allowed_buckets:
            raise ItemError(
                ErrorCode.BUCKET_NOT_ALLOWED, f"{uri}: bucket {bucket!r} is not allowed"
            )
        _check_key(key, uri)
        return await self._deadline(f"reading {uri}", self._get(bucket, key, uri))

    async def _get(self, bucket: str, key: str, uri: str) -> bytes:
        what = f"reading {uri}"
        async with self._slots:
            for attempt in range(1, self._max_attempts):
                try:
                    return await self._call(what, self._fetch(bucket, key, uri))
                except S3Unavailable:
                    await asyncio.sleep(_RETRY_BACKOFF_S * 2 ** (attempt - 1))
            return await self._call(what, self._fetch(bucket, key, uri))

    async def _deadline(self, what: str, call: Awaitable[T]) -> T:
        limit = self._settings.request_timeout_s
        try:
            async with asyncio.timeout(limit):
                return await call
        except TimeoutError as exc:
            raise S3Unavailable(f"S3 is unavailable {what}: no answer in {limit:g} s") from exc

    async def put(
        self, bucket: str, key: str, data: bytes, content_type: str | None = None
    ) -> None:
        """Store ``data`` at ``s3://bucket/key`` (overwrites)."""
        uri = f"s3://{bucket}/{key}"
        _check_key(key, uri)
        extra: dict[str, Any] = {"ContentType": content_type} if content_type else {}
        what = f"writing {uri}"
        request = self.client.put_object(Bucket=bucket, Key=key, Body=data, **extra)
        async with self._slots:
            await self._deadline(what, self._call(what, request))

    async def ensure_bucket(self, bucket: str) -> None:
        """Create ``bucket`` unless it exists; safe to call concurrently and repeatedly."""
        what = f"creating bucket s3://{bucket}"
        try:
            await self._call(what, self.client.head_bucket(Bucket=bucket))
            return
        except ItemError as exc:
            if exc.code is not ErrorCode.OBJECT_NOT_FOUND:
                raise
        extra: dict[str, Any] = {}
        if self._settings.region != "us-east-1":
            # Every region but us-east-1 requires the constraint to be spelled out.
            extra["CreateBucketConfiguration"] = {"LocationConstraint": self._settings.region}
        try:
            await self._call(what, self.client.create_bucket(Bucket=bucket, **extra))
        except ItemError as exc:
            # Lost a race with another creator: the bucket is there, which is the goal.
            if error_code(exc.__cause__) != "BucketAlreadyOwnedByYou":
                raise

    def _config(self) -> AioConfig:
        settings = self._settings
        return AioConfig(
            region_name=settings.region,
            connect_timeout=settings.connect_timeout_s,
            read_timeout=settings.read_timeout_s,
            retries={"total_max_attempts": self._max_attempts, "mode": "standard"},
            max_pool_connections=settings.max_concurrency + _SPARE_CONNECTIONS,
            # Newer botocore adds CRC headers that several S3-compatible stores reject.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # Custom endpoints (MinIO, moto) get path-style URLs: a virtual-host URL such
            # as http://images.minio:9000 does not resolve inside a compose network.
            s3={"addressing_style": "path"} if settings.endpoint_url else None,
        )

    def _http_session(self) -> aiohttp.ClientSession:
        settings = self._settings
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.max_concurrency),
            timeout=aiohttp.ClientTimeout(
                sock_connect=settings.connect_timeout_s, sock_read=settings.read_timeout_s
            ),
            auto_decompress=False,  # the stored bytes, as get_object would return them
            trace_configs=self._http_trace,
        )

    async def _fetch(self, bucket: str, key: str, uri: str) -> bytes:
        if self._presigner is None:
            raise RuntimeError(_NOT_STARTED)
        url = await self._presigner.url(bucket, key)
        if self._http is None:  # closed while presigning: shutting down
            raise S3Unavailable(f"S3 is unavailable reading {uri}: the store was closed")
        # encoded=True: re-quoting the query would break the signature.
        async with self._http.get(yarl.URL(url, encoded=True)) as response:
            if response.status != 200:
                raise await error_response(response)
            # Leaving the context on an unfinished body drops the connection instead of
            # draining it, so refusing a huge object costs no download.
            return await read_capped(response, uri, self._settings.max_object_bytes)

    async def _call(self, what: str, request: Awaitable[T]) -> T:
        """Await one client request, translating its failures like ``get`` does."""
        try:
            return await request
        except ClientError as exc:
            raise from_client_error(exc, what) from exc
        except ParamValidationError:
            raise
        except _TRANSPORT_ERRORS as exc:
            raise S3Unavailable(f"S3 is unavailable {what}: {exc}") from exc


async def read_capped(response: aiohttp.ClientResponse, uri: str, limit: int) -> bytes:
    """The body, or ``IMAGE_TOO_LARGE`` once it is over ``limit`` bytes (S3 reads and the
    legacy adapter's downloads)."""
    declared = response.content_length
    if declared is not None and declared > limit:
        raise ItemError(
            ErrorCode.IMAGE_TOO_LARGE, f"{uri} is {declared:,} bytes, over the limit of {limit:,}"
        )
    # The header can be missing (chunked encoding) or wrong: count as we go.
    data = bytearray()
    while chunk := await response.content.read(_CHUNK_BYTES):
        data += chunk
        if len(data) > limit:
            raise ItemError(
                ErrorCode.IMAGE_TOO_LARGE,
                f"{uri} is over the limit of {limit:,} bytes (stopped reading)",
            )
    return bytes(data)


def _check_key(key: str, uri: str) -> None:
    # Some servers and proxies normalise the request path, so "images/../secret/x" could
    # be served from another bucket, round the allow-list. A bad key is the producer's
    # mistake, hence INVALID_EVENT rather than OBJECT_NOT_FOUND.
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise ItemError(
            ErrorCode.INVALID_EVENT,
            f"{uri}: the key must be a relative path without '..' segments",
        )
    if len(key.encode()) > _MAX_KEY_BYTES:
        raise ItemError(ErrorCode.INVALID_EVENT, f"{uri[:80]}...: the key is over 1024 bytes")
