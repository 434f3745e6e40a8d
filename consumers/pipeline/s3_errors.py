"""S3's answers sorted into this item's fault (``ItemError``) or S3's (``S3Unavailable``)."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from botocore.exceptions import ClientError

from consumers.pipeline.item_errors import ItemError
from schemas.events import ErrorCode

_ERROR_BODY_BYTES = 64 * 1024
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "Throttling", "RequestTimeout", "ServiceUnavailable", "InternalError"}
)
# The credentials themselves are refused: every read fails alike, so S3 is unusable.
_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "RequestTimeTooSkewed",
        "AccountProblem",
    }
)


class S3Unavailable(Exception):
    """S3 cannot be used right now; retry later. Not the item's fault."""


async def error_response(response: aiohttp.ClientResponse) -> ClientError:
    """S3's XML error answer as the ``ClientError`` botocore would have raised."""
    body = await response.content.read(_ERROR_BODY_BYTES)
    error = {"Code": _xml_field(body, "Code"), "Message": _xml_field(body, "Message")}
    # Typed as the stubs' full response dict, of which a parsed error has only these.
    parsed: Any = {"Error": error, "ResponseMetadata": {"HTTPStatusCode": response.status}}
    return ClientError(parsed, "GetObject")


def _xml_field(body: bytes, name: str) -> str:
    match = re.search(b"<" + name.encode() + b">([^<]{0,1024})</", body)
    return match.group(1).decode(errors="replace") if match else ""


def error_code(exc: BaseException | None) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def from_client_error(exc: ClientError, what: str) -> Exception:
    """S3's answer as an ``ItemError`` (this object) or ``S3Unavailable`` (S3 as a whole)."""
    code = error_code(exc)
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    message = exc.response.get("Error", {}).get("Message", "") or code or str(status)
    if code in _NOT_FOUND_CODES or status == 404:
        noun = "bucket" if code == "NoSuchBucket" else "object"
        return ItemError(ErrorCode.OBJECT_NOT_FOUND, f"{what}: no such {noun} ({message})")
    if code in _TRANSIENT_CODES or status >= 500 or status in (408, 429):
        return S3Unavailable(f"S3 is unavailable {what}: {code or status} {message}")
    if code in _CREDENTIAL_CODES:
        return S3Unavailable(f"S3 refused the credentials {what}: {code} {message}")
    if code in ("AccessDenied", "InvalidObjectState") or code.startswith("KMS.") or status == 403:
        # This object cannot be read by us: a denied key or prefix, its KMS key denied or
        # disabled, archived (InvalidObjectState), or a missing key where the role lacks
        # s3:ListBucket (S3 then answers 403, not 404). Other objects may read fine, so
        # it is this event's error (dead-lettered, replayable once access is fixed).
        return ItemError(
            ErrorCode.OBJECT_NOT_FOUND,
            f"{what}: access denied to this object ({code or status}: {message}); "
            "a missing key also answers 403 where the role lacks s3:ListBucket",
        )
    return ItemError(ErrorCode.OBJECT_NOT_FOUND, f"{what}: S3 refused with {code}: {message}")
