"""Typed JSON errors: every failure the gateway answers has the same body.

``{"error": {"code": ..., "message": ..., "field": ...}, "request_id": ...}`` with a code
from a closed set (``ApiErrorCode``; the image codes are the pipeline's ``ErrorCode``
values) and the matching HTTP status.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from schemas.events import ErrorCode
from schemas.rpc import UNKNOWN_LABEL_SET

log = logging.getLogger("imagestream.gateway")


class ApiErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    TOO_MANY_ITEMS = "too_many_items"
    TEXT_TOO_LONG = "text_too_long"
    IMAGE_TOO_LARGE = ErrorCode.IMAGE_TOO_LARGE.value
    NOT_AN_IMAGE = ErrorCode.NOT_AN_IMAGE.value
    UNKNOWN_LABEL_SET = UNKNOWN_LABEL_SET
    UNKNOWN_TASK = "unknown_task"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    TIMEOUT = "timeout"
    UNAVAILABLE = ErrorCode.UNAVAILABLE.value
    INTERNAL = ErrorCode.INTERNAL.value


STATUS = {
    ApiErrorCode.INVALID_REQUEST: 400,
    ApiErrorCode.UNAUTHORIZED: 401,
    ApiErrorCode.FORBIDDEN: 403,
    ApiErrorCode.RATE_LIMITED: 429,
    ApiErrorCode.PAYLOAD_TOO_LARGE: 413,
    ApiErrorCode.TOO_MANY_ITEMS: 413,
    ApiErrorCode.TEXT_TOO_LONG: 422,
    ApiErrorCode.IMAGE_TOO_LARGE: 413,
    ApiErrorCode.NOT_AN_IMAGE: 415,
    ApiErrorCode.UNKNOWN_LABEL_SET: 404,
    ApiErrorCode.UNKNOWN_TASK: 422,
    ApiErrorCode.NOT_FOUND: 404,
    ApiErrorCode.METHOD_NOT_ALLOWED: 405,
    ApiErrorCode.TIMEOUT: 504,
    ApiErrorCode.UNAVAILABLE: 503,
    ApiErrorCode.INTERNAL: 500,
}
_BY_STATUS = {404: ApiErrorCode.NOT_FOUND, 405: ApiErrorCode.METHOD_NOT_ALLOWED}
_BY_STATUS |= {413: ApiErrorCode.PAYLOAD_TOO_LARGE}
# Encoder-side failures (an RpcReply's error code) as the gateway reports them.
_FROM_PIPELINE = {
    ErrorCode.IMAGE_TOO_LARGE.value: ApiErrorCode.IMAGE_TOO_LARGE,
    ErrorCode.NOT_AN_IMAGE.value: ApiErrorCode.NOT_AN_IMAGE,
    ErrorCode.UNAVAILABLE.value: ApiErrorCode.UNAVAILABLE,
    UNKNOWN_LABEL_SET: ApiErrorCode.UNKNOWN_LABEL_SET,
}


class ApiError(HTTPException):
    """Raise anywhere in a request; an HTTPException so that FastAPI's body parsing
    passes it through unchanged."""

    def __init__(self, code: ApiErrorCode, message: str, field: str | None = None) -> None:
        super().__init__(status_code=STATUS[code], detail=message)
        self.code = code
        self.message = message
        self.field = field

    @classmethod
    def from_pipeline(cls, code: str, message: str, field: str | None) -> ApiError:
        return cls(_FROM_PIPELINE.get(code, ApiErrorCode.INTERNAL), message, field)


class ErrorBody(BaseModel):
    code: ApiErrorCode
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
    request_id: str


def request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", ""))


def error_response(request: Request, error: ApiError) -> JSONResponse:
    return error_json(error, request_id(request))


def error_json(
    error: ApiError, request_id: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The typed body of ``error``; also for middleware, which runs outside the handlers."""
    body = ErrorResponse(
        error=ErrorBody(code=error.code, message=error.message, field=error.field),
        request_id=request_id,
    )
    status = error.status_code
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def _describe(exc: RequestValidationError) -> tuple[str, str | None]:
    first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
    field = ".".join(location) or None
    return f"{field or 'request'}: {first.get('msg', 'invalid')}", field


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(request, exc)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = _BY_STATUS.get(exc.status_code, ApiErrorCode.INVALID_REQUEST)
        return error_response(request, ApiError(code, str(exc.detail)))

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message, field = _describe(exc)
        return error_response(request, ApiError(ApiErrorCode.INVALID_REQUEST, message, field))

    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        message = f"internal error ({type(exc).__name__}); request_id {request_id(request)}"
        return error_response(request, ApiError(ApiErrorCode.INTERNAL, message))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, crashed)
