"""The record-boundary cases of the hostile corpus (issue 18): inputs that once made a
consumer replay one batch for ever. Each must get exactly one answer (a result, and a
DLQ record where its code calls for one) and let the group commit past it."""

from __future__ import annotations

import json

from tests.hostile_corpus import BUCKET, Case, event, json_case, one

# Keys the S3 gate in front of the test S3 answers with 403 (tests/s3_gate.py).
DENIED, ARCHIVED = "denied-object", "archived-object"
# A tenant longer than the test's Milvus collection allows: Milvus refuses the row.
LONG_TENANT = "a-tenant-name-over-sixteen-bytes"


def _raw(name: str, run: str, extra: bytes = b"", **ids: str) -> bytes:
    """An event for the good-c image written by hand, for what json.dumps will not
    write: ``extra`` goes in verbatim after the usual fields."""
    doc = {**event("good-c", run), "event_id": f"{run}-{name}", "image_id": name, **ids}
    return json.dumps(doc)[:-1].encode() + extra + b"}"


def _padded(name: str, run: str, total: int, **fields: object) -> bytes:
    """An event of exactly ``total`` bytes: an unknown field pads it."""
    short = json.dumps(event(name, run, **fields, padding="")).encode()
    return json.dumps(event(name, run, **fields, padding="p" * (total - len(short)))).encode()


def boundary_cases(run: str) -> list[Case]:
    """What once stalled a partition (issue 18): each must get one answer and a commit."""
    missing = f"s3://{BUCKET}/{run}/nothing-here.jpg"
    good = str(event("good-c", run)["uri"])
    return [
        # json.dumps writes a lone surrogate as the escape "\ud800".
        one(
            "lone-surrogate-event-id",
            "invalid_event",
            _raw("lone-surrogate-event-id", run, event_id="\ud800"),
        ),
        one(
            "lone-surrogate-image-id",
            "invalid_event",
            _raw("lone-surrogate-image-id", run, image_id="\udfff"),
        ),
        one(
            "lone-surrogate-metadata",
            "invalid_event",
            _raw("lone-surrogate-metadata", run, b', "metadata": {"k": "\\ud800"}'),
        ),
        one(
            "raw-surrogate-bytes",
            "invalid_event",
            _raw("raw-surrogate-bytes", run, b', "note": "\xed\xa0\x80"'),
        ),
        one(
            "int-over-4300-digits",
            "invalid_event",
            _raw("int-over-4300-digits", run, b', "top_k": 1' + b"0" * 5000),
        ),
        one(
            "image-id-600k",
            "invalid_event",
            json.dumps({"event_id": f"{run}-big", "image_id": "B" * 600_000}).encode(),
        ),
        # Just under the producer's 1 MiB: its DLQ record, with headers, is over it.
        Case(
            "padded-to-1mb",
            "object_not_found",
            [(b"padded-to-1mb", _padded("padded-to-1mb", run, 1_047_900, uri=missing))],
            dlq_cut=True,
        ),
        json_case(
            "metadata-multibyte-over-64k",
            "invalid_event",
            run,
            metadata={str(i): "\u00e9" * 1024 for i in range(30)},
        ),
        one(
            "duplicate-keys",
            "ok",
            _raw("duplicate-keys", run, f', "event_id": "{run}-dup-last"'.encode()),
        ),
        json_case("nul-in-event-id", "ok", run, uri=good, event_id=f"{run}\x00nul"),
        Case(
            "binary-header",
            "object_not_found",
            [(b"binary-header", json.dumps(event("binary-header", run, uri=missing)).encode())],
            headers=[("trace", b"\xff\xfe\x00"), ("plain", b"ok")],
        ),
        json_case(DENIED, "object_not_found", run),
        json_case(ARCHIVED, "object_not_found", run),
        json_case("milvus-refuses-row", "invalid_event", run, uri=good, collection=LONG_TENANT),
        *text_query_cases(run),
    ]


def text_query_cases(run: str) -> list[Case]:
    """TextQuery records the text-search consumer must answer with an error."""

    def query(name: str, text: str) -> Case:
        doc = {"event_id": f"{run}-{name}", "query_id": name, "text": text}
        return Case(
            name, "invalid_event", [(name.encode(), json.dumps(doc).encode())], topic="queries"
        )

    surrogate = Case(
        "lone-surrogate-text-query",
        "invalid_event",
        [
            (
                b"lone-surrogate-text-query",
                b'{"event_id": "%s-lsq", "query_id": "lone-surrogate-text-query", '
                b'"text": "\\ud800"}' % run.encode(),
            )
        ],
        topic="queries",
    )
    return [
        query("empty-text-query", ""),
        query("blank-text-query", " \n\t "),
        query("over-long-text-query", "cat " * 2000),
        surrogate,
    ]
