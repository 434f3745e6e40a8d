"""URLs as they may be shown: no credentials, no query string, no fragment.

A legacy job's ``s3_path`` may be a presigned URL (``X-Amz-Signature=...``), a callback
or polling URL may carry a token, and aiohttp's errors repeat the request URL in their
text (``ClientResponseError``: ``url=URL('...')``). Whatever reaches a log line, a metric
or a reply (an error result, a ``CallbackFailed`` error) goes through here first; the
URL itself is still used, unredacted, for the request.
"""

from __future__ import annotations

import re

from yarl import URL

# Any scheme://... run up to whitespace or a quote: inside a repr the URL is quoted.
_URL = re.compile(r"""[A-Za-z][A-Za-z0-9+.\-]*://[^\s'"<>()\[\]{}]+""")
REDACTED = "REDACTED"


def redact_url(url: str | URL) -> str:
    """``scheme://host[:port]/path``, with ``?REDACTED`` where a query was; userinfo gone."""
    text = str(url)
    try:
        parsed = url if isinstance(url, URL) else URL(text)
    except ValueError:
        return _cut(text)
    if not parsed.is_absolute():
        return _cut(text)
    shown = parsed.with_user(None).with_query(None).with_fragment(None)
    mark = f"?{REDACTED}" if parsed.raw_query_string or parsed.raw_fragment else ""
    return f"{str(shown)[:200]}{mark}"


def _cut(text: str) -> str:
    """Not a URL yarl parses: everything from the first ``?``/``#`` or ``@`` is dropped."""
    cut = re.split(r"[?#@]", text, maxsplit=1)[0]
    return cut[:200] + (f"?{REDACTED}" if cut != text else "")


def redact_text(text: str) -> str:
    """``text`` (an exception's message or repr) with every URL in it redacted."""
    return _URL.sub(lambda match: redact_url(match[0]), text)
