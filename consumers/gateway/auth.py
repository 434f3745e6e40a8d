"""Who may call the gateway: API keys, the tenants and scopes each key holds, per-key rate
limits and CORS (docs/gateway.md).

Every request but the public few (health, the demo page's HTML, the OpenAPI document)
must carry a key, as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; a missing
or unknown key is a 401 before any route runs, so a route added later is closed until
it says which scope it needs (``require``). A key past its rate answers 429 with
``Retry-After``. Routes then resolve the collection through the key (``Principal``): a
tenant the key does not hold is a 403, and no collection means the key's first tenant.

``auth.open`` runs without keys (a caller without one is an admin), and is refused
unless the gateway binds to a loopback address: it is for a laptop, never a network.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request, Security
from fastapi.security import APIKeyHeader, HTTPBearer
from prometheus_client import Counter
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from consumers.config.settings import GatewaySettings
from consumers.gateway.api_keys import ApiKeyRecord, AuthSettings, digest, load_keys
from consumers.gateway.api_keys import Scope as KeyScope
from consumers.gateway.errors import ApiError, ApiErrorCode, error_json
from consumers.pipeline.item_errors import ConfigError

PUBLIC = frozenset(
    {"/healthz", "/readyz", "/demo", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
REFUSED = Counter(
    "imagestream_gateway_auth_refused",
    "Gateway requests refused before any route: no key, an unknown key, over the rate.",
    ["reason"],
)


@dataclass(frozen=True)
class Principal:
    """The caller, as its key allows: ``tenants[0]`` is its default collection."""

    key_id: str
    tenants: tuple[str, ...]
    scopes: frozenset[KeyScope]
    rate_per_s: float | None = None
    burst: int | None = None

    @property
    def admin(self) -> bool:
        return KeyScope.ADMIN in self.scopes

    def allows(self, scope: KeyScope) -> bool:
        return self.admin or scope in self.scopes

    def collection(self, named: str | None) -> str | None:
        """The collection a request uses: the one it names, if this key holds it, else the
        key's default (an admin key without tenants: none, i.e. every tenant's search)."""
        if not named:
            return self.tenants[0] if self.tenants else None
        if self.admin or named in self.tenants:
            return named
        raise ApiError(
            ApiErrorCode.FORBIDDEN, f"this key may not use collection {named[:64]!r}", "collection"
        )

    def tenant(self, named: str | None) -> str:
        """``collection`` as the pipeline keys it: "" for none."""
        return self.collection(named) or ""

    @classmethod
    def of(cls, record: ApiKeyRecord) -> Principal:
        scopes = frozenset(record.scopes)
        return cls(record.id, tuple(record.tenants), scopes, record.rate_per_s, record.burst)


OPEN = Principal("open", (), frozenset({KeyScope.ADMIN}))


def presented_key(headers: Headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None


class RateLimiter:
    """A token bucket per key: ``rate`` per second sustained, ``burst`` at once."""

    def __init__(
        self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate_per_s, self.burst, self.clock = rate_per_s, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, when)

    def wait_s(
        self, key_id: str, rate_per_s: float | None = None, burst: int | None = None
    ) -> float:
        """0 when the request may go (a token is taken), else seconds until one may."""
        rate, size, now = rate_per_s or self.rate_per_s, float(burst or self.burst), self.clock()
        tokens, then = self._buckets.get(key_id, (size, now))
        tokens = min(size, tokens + (now - then) * rate)
        if tokens >= 1.0:
            self._buckets[key_id] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key_id] = (tokens, now)
        return (1.0 - tokens) / rate


class AuthMiddleware:
    """Authenticates and rate-limits; the principal goes to ``request.state.principal``."""

    def __init__(
        self, app: ASGIApp, keys: list[ApiKeyRecord], open_: bool, limiter: RateLimiter
    ) -> None:
        self.app = app
        self._by_digest = {record.sha256: Principal.of(record) for record in keys}
        self._open = open_
        self._limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        try:
            state["principal"] = self._admit(Headers(scope=scope))
        except _Refused as refused:
            REFUSED.labels(refused.reason).inc()
            response = error_json(refused.error, str(state.get("request_id", "")), refused.headers)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _admit(self, headers: Headers) -> Principal:
        key = presented_key(headers)
        if key is None:
            if self._open:
                return OPEN
            raise _Refused("missing", "send an API key: Authorization: Bearer <key>")
        principal = self._by_digest.get(digest(key))
        if principal is None:
            raise _Refused("unknown", "unknown API key")
        wait = self._limiter.wait_s(principal.key_id, principal.rate_per_s, principal.burst)
        if wait > 0:
            raise _Refused("rate", f"key {principal.key_id} is over its rate limit", wait)
        return principal


class _Refused(Exception):
    def __init__(self, reason: str, message: str, retry_after_s: float | None = None) -> None:
        self.reason = reason
        if retry_after_s is None:
            self.error = ApiError(ApiErrorCode.UNAUTHORIZED, message)
            self.headers = {"WWW-Authenticate": 'Bearer realm="imagestream"'}
        else:
            self.error = ApiError(ApiErrorCode.RATE_LIMITED, message)
            self.headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))}


# For the OpenAPI document only (/docs' "Authorize"): the middleware has checked the key.
_BEARER = HTTPBearer(auto_error=False, description="An API key: `imagestream keys create`.")
_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="The same key.")
Documented = Callable[..., Principal]


def require(scope: KeyScope) -> Documented:
    """A route dependency: the caller's principal, or 403 without ``scope``."""

    def principal(
        request: Request,
        _bearer: Annotated[object, Security(_BEARER)] = None,
        _header: Annotated[object, Security(_HEADER)] = None,
    ) -> Principal:
        found = getattr(request.state, "principal", None)
        if not isinstance(found, Principal):  # a public path reaching a keyed route: a bug
            raise ApiError(ApiErrorCode.UNAUTHORIZED, "send an API key")
        if not found.allows(scope):
            raise ApiError(ApiErrorCode.FORBIDDEN, f"this key lacks the {scope} scope")
        return found

    return principal


IngestKey = Annotated[Principal, Depends(require(KeyScope.INGEST))]
SearchKey = Annotated[Principal, Depends(require(KeyScope.SEARCH))]
FacesKey = Annotated[Principal, Depends(require(KeyScope.FACES))]
AdminKey = Annotated[Principal, Depends(require(KeyScope.ADMIN))]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def configured_keys(gateway: GatewaySettings) -> list[ApiKeyRecord]:
    auth: AuthSettings = gateway.auth
    return [*auth.keys, *load_keys(auth.keys_file)]


def check_exposure(gateway: GatewaySettings, keys: list[ApiKeyRecord]) -> None:
    """``ConfigError`` when the gateway would serve a network without keys (at start-up:
    building the app for its OpenAPI document needs no keys)."""
    auth = gateway.auth
    if auth.open and not is_loopback(gateway.host):
        raise ConfigError(
            f"gateway.auth.open is only allowed on a loopback address, not {gateway.host!r}: "
            "create keys with `imagestream keys create` instead"
        )
    if not keys and not auth.open:
        raise ConfigError(
            "the gateway has no API keys: create one with `imagestream keys create --tenant T "
            "--scope ingest --scope search`, or set IMAGESTREAM_GATEWAY__AUTH__OPEN=true "
            "(loopback only)"
        )


def install_auth(app: FastAPI, gateway: GatewaySettings) -> None:
    """Add the auth middleware (and CORS, when origins are configured) to ``app``. Call it
    between the body limit and the request ids: CORS must answer a preflight, and mark a
    401 as readable, outside the key check."""
    auth, keys = gateway.auth, configured_keys(gateway)
    app.state.check_exposure = lambda: check_exposure(gateway, keys)
    limiter = RateLimiter(auth.rate_per_s, auth.burst)
    app.add_middleware(AuthMiddleware, keys=keys, open_=auth.open, limiter=limiter)
    if auth.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=auth.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "x-api-key", "content-type", "x-request-id"],
            expose_headers=["retry-after", "x-request-id"],
        )
