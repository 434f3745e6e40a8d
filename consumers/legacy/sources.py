"""A legacy job's ``s3_path`` turned into the ``s3://bucket/key`` an event must name.

- ``s3://bucket/key``: used as it is (the consumers still enforce the bucket allow-list).
- An http(s) URL of the configured S3 endpoint (path style ``{endpoint}/bucket/key`` or
  virtual-host style ``bucket.{endpoint host}/key``; on AWS, when no endpoint is set,
  the ``*.amazonaws.com`` forms): mapped to bucket/key and read with our own credentials,
  so a presigned URL's query string is dropped.
- Any other URL: downloaded only from ``legacy.allowed_hosts`` (every redirect hop too),
  through the SSRF guard (``legacy.download_networks``),
  size-capped at ``s3.max_object_bytes``, and staged into ``s3.bucket`` under
  ``{legacy.staging_prefix}/shared/{model}/{job id}``.

Messages name URLs redacted (no query string: a presigned URL's signature, no userinfo).
Failures that retrying cannot fix are ``ItemError`` (the adapter publishes an error
result, so the legacy backend hears back); a source that is down is ``SourceUnavailable``.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import aiohttp
from yarl import URL

from consumers.config.settings import LegacySettings, S3Settings
from consumers.legacy.ssrf import (
    AddressGuard,
    Refused,
    check_url,
    get_following_redirects,
    host_allowed,
)
from consumers.ops.redact import redact_text, redact_url
from consumers.pipeline.item_errors import ItemError
from consumers.pipeline.s3 import S3Store, read_capped
from consumers.vectorstore.keys import staged_key
from schemas.events import S3_URI, ErrorCode

_AWS_PATH = re.compile(r"^s3([.-][a-z0-9-]+)?(\.dualstack)?(\.[a-z0-9-]+)?\.amazonaws\.com$")
_AWS_VHOST = re.compile(r"^(?P<bucket>[a-z0-9.\-]+)\.s3([.-][a-z0-9-]+)?\.amazonaws\.com$")


class SourceUnavailable(Exception):
    """The download failed in a way that may pass (5xx, connection, timeout)."""


def _default_port(url: URL) -> int | None:
    return url.port or {"http": 80, "https": 443}.get(url.scheme)


def _bucket_key(bucket: str, key: str) -> str | None:
    uri = f"s3://{bucket}/{unquote(key)}"
    return uri if S3_URI.match(uri) else None


def s3_uri_for_url(url: URL, endpoint_url: str | None) -> str | None:
    """The s3:// URI an S3 object URL names, or ``None`` when it is not an S3 URL."""
    host = (url.host or "").lower()
    path = url.raw_path.lstrip("/")
    if endpoint_url:
        endpoint = URL(endpoint_url)
        same_port = _default_port(url) == _default_port(endpoint)
        ep_host = (endpoint.host or "").lower()
        if same_port and host == ep_host and "/" in path:
            return _bucket_key(*path.split("/", 1))
        if same_port and host.endswith("." + ep_host) and path:
            return _bucket_key(host[: -len(ep_host) - 1], path)
        return None
    vhost = _AWS_VHOST.match(host)
    if vhost and path:
        return _bucket_key(vhost["bucket"], path)
    if _AWS_PATH.match(host) and "/" in path:
        return _bucket_key(*path.split("/", 1))
    return None


class SourceResolver:
    def __init__(
        self,
        s3_settings: S3Settings,
        legacy: LegacySettings,
        s3: S3Store,
        http: aiohttp.ClientSession,
        guard: AddressGuard,
    ) -> None:
        self.s3_settings = s3_settings
        self.legacy = legacy
        self.s3 = s3
        self.http = http
        self.guard = guard

    async def resolve(self, s3_path: str, model: str, job_id: str) -> str:
        """The s3:// URI of the job's image, staging a download where one is needed."""
        if s3_path.startswith("s3://"):
            if not S3_URI.match(s3_path):
                shown = redact_url(s3_path)
                raise ItemError(ErrorCode.INVALID_EVENT, f"s3_path {shown!r} is malformed")
            return s3_path
        try:
            url = check_url(s3_path, self.guard)
        except Refused as exc:
            raise ItemError(ErrorCode.SOURCE_NOT_ALLOWED, f"s3_path refused: {exc}") from exc
        mapped = s3_uri_for_url(url, self.s3_settings.endpoint_url)
        if mapped is not None:
            return mapped
        if not host_allowed(url.host or "", self.legacy.allowed_hosts):
            raise ItemError(
                ErrorCode.SOURCE_NOT_ALLOWED,
                f"s3_path host {url.host!r} is neither the S3 endpoint nor in legacy.allowed_hosts",
            )
        data, content_type = await self._download(str(url))
        # Legacy jobs carry no tenant: staged in the shared segment (consumers/vectorstore/keys.py).
        key = staged_key(self.legacy.staging_prefix, "", model, job_id)
        await self.s3.put(self.s3_settings.bucket, key, data, content_type=content_type)
        return f"s3://{self.s3_settings.bucket}/{key}"

    async def _download(self, url: str) -> tuple[bytes, str | None]:
        try:
            hosts = self.legacy.allowed_hosts
            response = await get_following_redirects(self.http, url, self.guard, hosts)
            async with response:
                self._check_status(response, url)
                limit = self.s3_settings.max_object_bytes
                return await read_capped(response, redact_url(url), limit), response.content_type
        except Refused as exc:
            raise ItemError(ErrorCode.SOURCE_NOT_ALLOWED, f"s3_path refused: {exc}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # from None: the aiohttp error repeats the URL, signature included, and a
            # logged traceback would print it.
            shown = redact_url(url)
            raise SourceUnavailable(f"downloading {shown}: {redact_text(repr(exc))}") from None

    @staticmethod
    def _check_status(response: aiohttp.ClientResponse, url: str) -> None:
        if response.status >= 500 or response.status in (408, 429):
            raise SourceUnavailable(f"downloading {redact_url(url)}: HTTP {response.status}")
        if response.status != 200:
            raise ItemError(
                ErrorCode.OBJECT_NOT_FOUND, f"downloading {redact_url(url)}: HTTP {response.status}"
            )
