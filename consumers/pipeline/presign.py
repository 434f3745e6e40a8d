"""Presigned GET URLs for the S3 reader, without botocore's per-call request machinery.

``generate_presigned_url`` resolves the endpoint through botocore's rule set on every
call (its cache is keyed by the object key too, so it misses every time), then emits
events and builds a whole request: 0.53 ms of the event loop's CPU per GET on the 2-core
box, a third of what the loop spends per image in the sim scale-out run
(docs/performance.md). Per object only the key and the signature change, so this
learns each bucket's URL once from botocore and signs later keys with botocore's own
query signers (``HmacV1QueryAuth``, ``S3SigV4QueryAuth``): 0.05 ms (v2) to 0.15 ms (v4).

It only takes that shortcut where it gives botocore's exact URL: per bucket it presigns
a probe key (with characters that need quoting) both ways within one clock second and
compares the whole URL, signature included. Anything else (another signature version,
addressing that signs a path other than the URL's, no credentials, a future botocore
that does it differently) keeps calling ``generate_presigned_url`` for that bucket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from botocore.auth import BaseSigner, HmacV1QueryAuth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.utils import percent_encode

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client

log = logging.getLogger("imagestream.s3")

# Quoted by botocore (space, '+', '=', '&', non-ASCII) and kept ('/', '~'): the probe
# checks that keys are quoted as botocore quotes them.
PROBE_KEY = "imagestream/presign probe+=&~ü.jpg"
# How many times the probe tries to land both URLs in one clock second.
_PROBE_TRIES = 3
_V2_TIME = "Expires"
_V4_TIME = "X-Amz-Date"

Signer = Callable[[Any], BaseSigner]  # frozen credentials -> a signer for one request


class Presigner:
    """``await presigner.url(bucket, key)``: the presigned GET botocore would give."""

    def __init__(self, client: S3Client, credentials: Any, expires_s: int) -> None:
        self._client = client
        self._credentials = credentials  # botocore's (refreshable) credentials, or None
        self._expires_s = expires_s
        self._buckets: dict[str, tuple[str, Signer] | None] = {}  # bucket -> (prefix, signer)
        self._lock = asyncio.Lock()

    async def url(self, bucket: str, key: str) -> str:
        learned = self._buckets.get(bucket)
        if learned is None and bucket not in self._buckets:
            learned = await self._learn(bucket)
        if learned is None:
            return await self._botocore(bucket, key)
        prefix, signer = learned
        return await self._sign(prefix, signer, key)

    async def _botocore(self, bucket: str, key: str) -> str:
        return await self._client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self._expires_s
        )

    async def _sign(self, prefix: str, signer: Signer, key: str) -> str:
        frozen = await self._credentials.get_frozen_credentials()  # refreshes when due
        request = AWSRequest(method="GET", url=prefix + percent_encode(key, safe="/~"))
        signer(frozen).add_auth(request)
        return str(request.url)

    async def _learn(self, bucket: str) -> tuple[str, Signer] | None:
        async with self._lock:
            if bucket not in self._buckets:
                self._buckets[bucket] = await self._probe(bucket)
                how = "signed here" if self._buckets[bucket] else "botocore's presigner"
                log.info("S3 GETs from bucket %r: %s", bucket, how)
        return self._buckets[bucket]

    async def _probe(self, bucket: str) -> tuple[str, Signer] | None:
        if self._credentials is None:
            return None
        for _ in range(_PROBE_TRIES):
            theirs = await self._botocore(bucket, PROBE_KEY)
            learned = self._template(theirs)
            if learned is None:
                return None
            ours = await self._sign(*learned, PROBE_KEY)
            if _signed_at(ours) != _signed_at(theirs):
                continue  # a second ticked between the two: try again
            return learned if ours == theirs else None
        return None

    def _template(self, url: str) -> tuple[str, Signer] | None:
        """(URL up to the key, the signer) from one of botocore's presigned URLs."""
        base, _, query = url.partition("?")
        quoted = percent_encode(PROBE_KEY, safe="/~")
        if not base.endswith(quoted):
            return None
        prefix, params = base[: -len(quoted)], parse_qs(query)
        expires = self._expires_s
        if params.get("X-Amz-Algorithm") == ["AWS4-HMAC-SHA256"]:
            scope = params.get("X-Amz-Credential", [""])[0].split("/")
            if len(scope) != 5:
                return None
            region, service = scope[2], scope[3]
            return prefix, lambda c: S3SigV4QueryAuth(c, service, region, expires=expires)
        if "AWSAccessKeyId" in params and "Signature" in params:
            return prefix, lambda c: HmacV1QueryAuth(c, expires=expires)
        return None


def _signed_at(url: str) -> tuple[list[str], list[str]]:
    params = parse_qs(urlsplit(url).query)
    return params.get(_V2_TIME, []), params.get(_V4_TIME, [])
