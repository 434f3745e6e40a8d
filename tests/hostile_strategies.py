"""Hypothesis strategies for hostile Kafka records: keys, values and headers.

Values are mostly JSON shaped like the events (so that generation reaches past the
parser into validation and ids), written with hostile strings: lone surrogates (as
``\\ud800`` escapes and as raw bytes), NUL and control characters, multibyte text, ints
over Python's 4,300-digit limit, duplicate keys, deep nesting, cut-off documents; and
plain random bytes.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from consumers.pipeline.records import Record

# The topic a record claims to come from does not matter to the boundary.
TOPIC = "images.v1"
SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
NASTY = st.sampled_from(["\x00", "\x1b", "\u202e", "\ufeff", "\uffff", "é", "🦔", "\\", '"'])
hostile_chars = st.one_of(st.characters(), SURROGATES, NASTY)
hostile_text = st.one_of(
    st.text(hostile_chars, max_size=40),
    st.sampled_from(["", " ", "\ud800", "x" * 513, "é" * 600, "s3://images/a.jpg", "clip"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    hostile_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=12,
)
_FIELDS = ["event_id", "image_id", "query_id", "uri", "text", "tasks", "top_k", "collection"]
_FIELDS += ["metadata", "reply", "image_ids", "schema_version", "submitted_at"]
# Shaped like an event: some of its fields, with plausible or hostile values.
event_docs = st.dictionaries(
    st.sampled_from(_FIELDS) | hostile_text,
    st.one_of(
        hostile_text,
        json_values,
        st.just("s3://images/x.jpg"),
        st.dictionaries(hostile_text, hostile_text, max_size=3),  # metadata
        st.fixed_dictionaries(  # reply
            {"callback_url": hostile_text, "legacy_id": hostile_text}, optional={"x": scalars}
        ),
    ),
    max_size=8,
)


def _as_json(doc: Any, ascii_only: bool) -> bytes:
    # ensure_ascii=False writes a lone surrogate as raw (invalid UTF-8) bytes.
    text = json.dumps(doc, ensure_ascii=ascii_only, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def json_bytes(draw: st.DrawFn) -> bytes:
    """An event-shaped document as bytes, perhaps with a hand-made twist."""
    doc = draw(event_docs)
    data = _as_json(doc, draw(st.booleans()))
    twist = draw(st.sampled_from(["none", "duplicate", "bigint", "nest", "cut", "pad"]))
    if twist == "bigint" and data.endswith(b"}") and len(data) > 2:
        # Over Python's 4,300-digit int limit (written by hand: hypothesis cannot repr it).
        data = data[:-1] + b', "top_k": 1' + b"0" * draw(st.integers(4290, 5000)) + b"}"
    elif twist == "duplicate" and data.startswith(b"{") and len(data) > 2:
        data = data[:-1] + b', "event_id": "again", "event_id": "\\ud800"}'
    elif twist == "nest":
        depth = draw(st.integers(1, 5000))
        data = b"[" * depth + data + b"]" * depth
    elif twist == "cut":
        data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    elif twist == "pad" and data.endswith(b"}") and len(data) > 2:
        data = data[:-1] + b', "pad": "' + b"\\u00e9" * draw(st.integers(0, 20_000)) + b'"}'
    return data


values = st.one_of(json_bytes(), st.binary(max_size=300))
keys = st.one_of(st.none(), st.binary(max_size=80), hostile_text.map(lambda t: _as_json(t, False)))
# Header names are str in aiokafka (it decodes them as UTF-8); values are any bytes.
headers = st.lists(
    st.tuples(st.text(max_size=20), st.binary(max_size=60)).map(tuple), max_size=3
).map(tuple)


@st.composite
def records(draw: st.DrawFn) -> Record:
    offset = draw(st.integers(0, 2**40))
    return Record(TOPIC, draw(st.integers(0, 3)), offset, draw(keys), draw(values), draw(headers))
