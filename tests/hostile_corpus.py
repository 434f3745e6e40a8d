"""The hostile input corpus: every case built in memory, small, with its expected outcome.

Each case is one or more Kafka records (key, value) plus the S3 objects they point at.
``expect`` is the documented outcome for the ``clip`` task: ``ok``, an error code, or
``none`` (the event is not for this task). Image ids are the case names, so results
can be matched to cases even when an event's ids cannot be parsed (the key is used).
Cases on ``queries`` go to the text-search consumer instead (no DLQ there). Every case
goes through a running consumer; ``tests/boundary_corpus.py`` adds the record-boundary
cases (issue 18).
"""

from __future__ import annotations

import functools
import io
import json
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

BUCKET = "images"
MISSING_BUCKET = "ghost-bucket"  # allowed, never created
MAX_OBJECT_BYTES = 300_000


@dataclass
class Case:
    name: str
    expect: str
    records: list[tuple[bytes | None, bytes]]
    objects: dict[str, bytes] = field(default_factory=dict)
    results: int = 1  # how many results the case yields (a duplicate event yields one)
    headers: list[tuple[str, bytes]] = field(default_factory=list)  # on each record
    topic: str = "images"  # or "queries": the text-search consumer
    dlq_cut: bool = False  # the DLQ record had to be cut to fit the record size limit

    @property
    def dlq_records(self) -> int:
        return 1 if self.topic == "images" and self.expect in DLQ_EXPECTED else 0


# The codes dead-lettered (consumers.worker.dlq.DLQ_CODES), as the outcomes expected here name them.
DLQ_EXPECTED = frozenset(
    {
        "invalid_event",
        "unsupported_schema",
        "bucket_not_allowed",
        "object_not_found",
        "image_too_large",
        "not_an_image",
        "internal",
    }
)


def _pixels(seed: int, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _jpeg(seed: int) -> bytes:
    return _save(Image.fromarray(_pixels(seed)), "JPEG", quality=85)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header claiming a huge canvas, with a few bytes of pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        [_png_chunk(b"IHDR", header), _png_chunk(b"IDAT", idat), _png_chunk(b"IEND", b"")]
    )


def _gif_declaring(width: int, height: int) -> bytes:
    screen = struct.pack("<HHBBB", width, height, 0, 0, 0)
    image = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + image + b";"


def _animated_gif() -> bytes:
    frames = [Image.fromarray(_pixels(s)).convert("P") for s in (1, 2, 3)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _exif_rotated() -> bytes:
    image = Image.fromarray(_pixels(7, (32, 80)))
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    return _save(image, "JPEG", exif=exif.tobytes())


def _sixteen_bit() -> bytes:
    ramp = np.linspace(0, 65535, 48 * 64, dtype=np.uint16).reshape(48, 64)
    return _save(Image.fromarray(ramp), "PNG")


def _corrupt_png() -> bytes:
    data = bytearray(_save(Image.fromarray(_pixels(9)), "PNG"))
    data[60] ^= 0xFF  # inside IDAT: its CRC no longer matches
    return bytes(data)


def _transparent_palette_png() -> bytes:
    image = Image.fromarray(_pixels(11)).convert("P")
    return _save(image, "PNG", transparency=0)


@functools.cache
def objects() -> dict[str, tuple[bytes, str]]:
    """Objects by case name: the bytes and the extension they are stored under."""
    return {
        "good-a": (_jpeg(1), "jpg"),
        "good-b": (_jpeg(2), "jpg"),
        "good-c": (_jpeg(3), "jpg"),
        "truncated-jpeg": (_jpeg(4)[:700], "jpg"),
        "zero-bytes": (b"", "jpg"),
        "png-bomb-30000x30000": (_png_declaring(30000, 30000), "png"),
        "gif-bomb-65535x65535": (_gif_declaring(65535, 65535), "gif"),
        "over-byte-cap": (_jpeg(5) + bytes(MAX_OBJECT_BYTES), "jpg"),
        "html-named-jpg": (b"<!doctype html><html><body><img src=x></body></html>", "jpg"),
        "svg": (
            b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="9" height="9"/></svg>',
            "svg",
        ),
        "pdf-named-jpg": (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "jpg"),
        "corrupt-png-crc": (_corrupt_png(), "png"),
        "animated-gif": (_animated_gif(), "gif"),
        "cmyk-jpeg": (_save(Image.fromarray(_pixels(6)).convert("CMYK"), "JPEG"), "jpg"),
        "16-bit-png": (_sixteen_bit(), "png"),
        "1x1-png": (_save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "png"),
        "exif-rotated-jpeg": (_exif_rotated(), "jpg"),
        "palette-png-transparency": (_transparent_palette_png(), "png"),
        "webp": (_save(Image.fromarray(_pixels(12)), "WEBP"), "webp"),
        "grayscale-jpeg": (_save(Image.fromarray(_pixels(13)).convert("L"), "JPEG"), "jpg"),
    }


OBJECT_OUTCOMES = {
    "good-a": "ok",
    "good-b": "ok",
    "good-c": "ok",
    "truncated-jpeg": "not_an_image",
    "zero-bytes": "not_an_image",
    "png-bomb-30000x30000": "image_too_large",
    "gif-bomb-65535x65535": "image_too_large",
    "over-byte-cap": "image_too_large",
    "html-named-jpg": "not_an_image",
    "svg": "not_an_image",
    "pdf-named-jpg": "not_an_image",
    "corrupt-png-crc": "not_an_image",
    "animated-gif": "ok",
    "cmyk-jpeg": "ok",
    "16-bit-png": "ok",
    "1x1-png": "ok",
    "exif-rotated-jpeg": "ok",
    "palette-png-transparency": "ok",
    "webp": "ok",
    "grayscale-jpeg": "ok",
}


def event(name: str, run: str, **fields: object) -> dict[str, object]:
    data = objects().get(name)
    uri = f"s3://{BUCKET}/{run}/{name}.{data[1]}" if data else f"s3://{BUCKET}/{run}/{name}.jpg"
    return {"event_id": f"{run}-{name}", "image_id": name, "uri": uri, "top_k": 3, **fields}


def one(name: str, expect: str, value: bytes) -> Case:
    return Case(name, expect, [(name.encode(), value)])


def json_case(name: str, expect: str, run: str, **fields: object) -> Case:
    return one(name, expect, json.dumps(event(name, run, **fields)).encode())


def build(run: str) -> list[Case]:
    """Every case of one run; ``run`` keeps keys and event ids unique per test run."""
    cases = [
        Case(
            name,
            OBJECT_OUTCOMES[name],
            [(name.encode(), json.dumps(event(name, run)).encode())],
            {f"{run}/{name}.{ext}": data},
        )
        for name, (data, ext) in objects().items()
    ]
    duplicate = json.dumps(event("duplicate-event-id", run, uri=event("good-a", run)["uri"]))
    cases += [
        json_case("missing-object", "object_not_found", run),
        json_case("missing-bucket", "object_not_found", run, uri=f"s3://{MISSING_BUCKET}/x.jpg"),
        json_case("disallowed-bucket", "bucket_not_allowed", run, uri="s3://secrets/x.jpg"),
        json_case("uri-not-s3", "invalid_event", run, uri="https://example.com/cat.jpg"),
        json_case("uri-file-scheme", "invalid_event", run, uri="file:///etc/passwd"),
        json_case("key-dot-dot", "invalid_event", run, uri=f"s3://{BUCKET}/a/../../etc/x.jpg"),
        json_case("wrong-types", "invalid_event", run, top_k="many", tasks="clip"),
        json_case("unknown-schema-version", "unsupported_schema", run, schema_version=2),
        json_case(
            "metadata-too-many", "invalid_event", run, metadata={str(i): "v" for i in range(64)}
        ),
        json_case("metadata-value-too-long", "invalid_event", run, metadata={"note": "x" * 5000}),
        json_case("metadata-not-strings", "invalid_event", run, metadata={"n": {"deep": [1]}}),
        json_case("event-id-too-long", "invalid_event", run, event_id="e" * 600),
        json_case("tenant-control-char", "invalid_event", run, collection="acme\x00\x1b[2J"),
        json_case("top-k-zero", "ok", run, uri=event("good-b", run)["uri"], top_k=0),
        json_case("other-task-only", "none", run, tasks=["face"]),
        one("invalid-json", "invalid_event", b'{"event_id": "x", "image_id": '),
        one("json-wrong-shape", "invalid_event", b'["event_id", "image_id", "uri"]'),
        one("json-null", "invalid_event", b"null"),
        one(
            "missing-uri",
            "invalid_event",
            json.dumps({"event_id": f"{run}-m", "image_id": "missing-uri"}).encode(),
        ),
        one("non-utf8-bytes", "invalid_event", b"\xff\xfe\xfa{\x00\x81"),
        one("empty-value", "invalid_event", b""),
        one("deeply-nested-json", "invalid_event", b"[" * 200_000 + b"]" * 200_000),
        Case("duplicate-event-id", "ok", [(b"duplicate-event-id", duplicate.encode())] * 2),
    ]
    for case in cases:
        if case.expect == "none":
            case.results = 0
    return cases
