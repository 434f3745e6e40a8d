"""ASGI middleware: request ids (and a response counter), and the request body limit.

Request ids (seed 001): the caller's ``request_id`` header is echoed, else a UUID is made.

Both ``request_id`` (seed 001's spelling) and ``X-Request-ID`` are read, and both are set
on the response, so proxies that drop header names with underscores still carry one.
The id is in ``request.state.request_id``, in every JSON body, and in the log line of a
generated one, so a response can always be matched to the logs.
"""

from __future__ import annotations

import logging
import uuid

from prometheus_client import Counter
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consumers.gateway.errors import ApiError, ApiErrorCode

log = logging.getLogger("imagestream.gateway")
RESPONSES = Counter(
    "imagestream_gateway_responses",
    "Gateway responses by route template and HTTP status.",
    ["route", "status"],
)
HEADERS = ("request_id", "x-request-id")
MAX_ID_CHARS = 128


def _usable(value: str | None) -> bool:
    return bool(value) and len(value or "") <= MAX_ID_CHARS and (value or "").isprintable()


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = next((headers[h] for h in HEADERS if _usable(headers.get(h))), None)
        request_id = given or str(uuid.uuid4())
        if given is None:
            log.info("%s %s: request_id %s", scope["method"], scope["path"], request_id)
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = getattr(scope.get("route"), "path", "unmatched")  # a bounded set
                RESPONSES.labels(route, str(message["status"])).inc()
                response_headers = MutableHeaders(scope=message)
                for name in HEADERS:
                    response_headers[name] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyLimitMiddleware:
    """Refuses a request body over ``max_bytes`` (declared or counted) with a typed 413.

    The error is raised from ``receive``, so it surfaces wherever the body is read and
    is answered by the app's ``ApiError`` handler like any other error.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        received = 0

        async def limited() -> Message:
            nonlocal received
            if declared.isdigit() and int(declared) > self.max_bytes:
                self._refuse(int(declared))
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    self._refuse(received)
            return message

        await self.app(scope, limited, send)

    def _refuse(self, size: int) -> None:
        raise ApiError(
            ApiErrorCode.PAYLOAD_TOO_LARGE,
            f"the request body is over the limit of {self.max_bytes:,} bytes ({size:,} so far)",
        )
