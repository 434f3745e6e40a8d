"""Keys built from a tenant and a caller's id, injective so two tenants never share one.

Tenants and image ids are untrusted strings: ``f"{tenant}/{image_id}"`` lets tenant ""
with id ``"north/x"`` write tenant ``north``'s row for ``x``. Every key here escapes its
parts first, so a key decodes to exactly one (tenant, id) pair:

- Vector primary keys (``vector_id``): ``%`` -> ``%25`` and ``/`` -> ``%2F`` in both parts;
  the tenant-less key is the escaped id (no ``/`` in it), a tenant's key is
  ``{escaped tenant}/{escaped id}`` (exactly one ``/``). Ids made of anything but ``%``
  and ``/`` keep the key they had before this scheme, so existing collections only
  need migrating for those rows (docs/gateway.md). The escape at most triples a
  character's bytes, and ``%``/``/`` are one byte each, so Milvus's byte cap holds.
- Staged objects (``staged_key``): ``{prefix}/{tenant segment}/{part}/...`` where the
  segment is ``shared`` (no tenant) or ``t-`` + the percent-encoded tenant, and every
  part is percent-encoded (``/`` included): the segment names the tenant, and
  ``staged_tenant`` reads it back to check that an event reads only its own uploads.
- Encoder calls (RPC) stage under ``{prefix}/rpc/`` (``rpc_key``): random names, deleted
  after the answer, readable by encoder calls only.
- ``StagingAreas.check`` refuses an event another tenant's staged object.
- Face ids (``face_id``) are ``{image id}#{n}``, keyed like any id by ``vector_id``.
- Result lookups use the tuple ``(tenant, image id)`` as the key (gateway/cache.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from consumers.pipeline.item_errors import ItemError
from schemas.events import ErrorCode

if TYPE_CHECKING:
    from consumers.config.settings import Settings

_ESCAPES = {"%": "%25", "/": "%2F"}
_ESCAPED = re.compile("[%/]")
_UNESCAPED = re.compile("%(25|2F)")
_DECODE = {"25": "%", "2F": "/"}
SHARED = "shared"
RPC = "rpc"  # neither "shared" nor "t-...": no tenant's segment
TENANT_MARK = "t-"


def escape(part: str) -> str:
    return _ESCAPED.sub(lambda m: _ESCAPES[m[0]], part)


def unescape(part: str) -> str:
    return _UNESCAPED.sub(lambda m: _DECODE[m[1]], part)


def vector_id(image_id: str, tenant: str) -> str:
    """The primary key of ``image_id`` (or a face id) in ``tenant``; "" = no tenant."""
    return f"{escape(tenant)}/{escape(image_id)}" if tenant else escape(image_id)


def id_of(key: str, tenant: str) -> str:
    """The id ``vector_id`` encoded in ``key``, for a key of ``tenant``'s rows."""
    if tenant:
        head, _, tail = key.partition("/")
        if head != escape(tenant):
            raise ValueError(f"key {key[:200]!r} is not one of tenant {tenant[:64]!r}'s")
        return unescape(tail)
    return unescape(key)


def strip_tenant(key: str, tenant: str) -> str:
    """The id in a primary key of ``tenant`` (``id_of``, under the name tasks use)."""
    return id_of(key, tenant)


def face_id(image_id: str, n: int) -> str:
    """The id of an image's n-th face (its primary key is ``vector_id`` of this)."""
    return f"{image_id}#{n}"


def image_of(face_key: str) -> str:
    """The image id inside a face id (image ids may contain '#'; n never does)."""
    return face_key.rpartition("#")[0]


def _component(part: str) -> str:
    # surrogatepass: an id may hold a lone surrogate (valid JSON), which strict UTF-8 refuses.
    return quote(part, safe="", errors="surrogatepass")


def tenant_segment(tenant: str) -> str:
    return TENANT_MARK + _component(tenant) if tenant else SHARED


def staged_key(prefix: str, tenant: str, *parts: str) -> str:
    """Where an upload of ``tenant`` is staged: under its own segment of ``prefix``."""
    return "/".join((prefix, tenant_segment(tenant), *map(_component, parts)))


def rpc_key(prefix: str, folder: str, index: int) -> str:
    """An encoder call's image: ``{prefix}/rpc/...``, a random folder deleted after the
    answer. Not per tenant (the call carries none), so one lifecycle rule on the prefix
    catches what a crash leaves; only encoder calls may read it."""
    return f"{prefix}/{RPC}/{_component(folder)}/{index}"


def staged_tenant(prefix: str, key: str) -> tuple[str, str] | None:
    """(tenant, the rest of the key) of a key under ``prefix``, ``None`` when the key is
    not under it. A key under ``prefix`` with no valid segment raises ``ValueError``."""
    if not key.startswith(f"{prefix}/"):
        return None
    segment, _, rest = key[len(prefix) + 1 :].partition("/")
    if segment == SHARED:
        return "", rest
    if segment.startswith(TENANT_MARK) and len(segment) > len(TENANT_MARK):
        return unquote(segment[len(TENANT_MARK) :], errors="surrogatepass"), rest
    raise ValueError(f"{key[:200]!r} has no tenant segment")


@dataclass(frozen=True)
class StagingAreas:
    """Where the gateway and the legacy adapter stage uploads: objects there are read only
    by events of the tenant whose segment they are under (an event naming another
    tenant's upload would get it captioned, labelled or embedded for itself)."""

    bucket: str
    prefixes: tuple[str, ...]

    @classmethod
    def of(cls, settings: Settings) -> StagingAreas:
        prefixes = (settings.gateway.staging_prefix, settings.legacy.staging_prefix)
        return cls(settings.s3.bucket, tuple(p for p in prefixes if p))

    def check(self, bucket: str, key: str, tenant: str | None) -> None:
        """``ItemError`` unless ``tenant`` may read the object; ``None``: an encoder call
        (RPC), which carries no tenant and may read only the gateway's RPC staging."""
        if bucket != self.bucket:
            return
        for prefix in self.prefixes:
            if not key.startswith(f"{prefix}/"):
                continue
            if key.startswith(f"{prefix}/{RPC}/"):
                if tenant is None:
                    return
                break
            try:
                staged = staged_tenant(prefix, key)
            except ValueError:  # under the prefix but in no tenant's segment: nobody's
                break
            if tenant is not None and staged is not None and staged[0] == tenant:
                return
            break
        else:
            return  # not staged: the bucket allow-list alone decides
        uri = f"s3://{bucket}/{key[:200]}"
        raise ItemError(ErrorCode.BUCKET_NOT_ALLOWED, f"{uri} is not staged for this tenant")
