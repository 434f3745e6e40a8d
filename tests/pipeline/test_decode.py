"""decode_image on real encoded bytes, built in memory with Pillow."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from consumers.config.settings import DecodeSettings
from consumers.pipeline.decode import decode_and_prepare, decode_image, sniff_content_type
from consumers.pipeline.item_errors import ItemError
from schemas.events import ErrorCode

SETTINGS = DecodeSettings(max_side=512)
RED = (220, 30, 30)
BLUE = (30, 30, 220)


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` with a few bytes of (bogus) pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def centre(image: Image.Image) -> tuple[int, ...]:
    pixel = image.getpixel((image.width // 2, image.height // 2))
    assert isinstance(pixel, tuple)
    return pixel


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def expect_error(data: bytes, code: ErrorCode, settings: DecodeSettings = SETTINGS) -> str:
    with pytest.raises(ItemError) as caught:
        decode_image(data, settings)
    assert caught.value.code is code
    return caught.value.message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_formats_round_trip_to_rgb(fmt: str) -> None:
    data = encode(Image.new("RGB", (64, 48), RED), fmt)
    image = decode_image(data, SETTINGS)
    assert image.mode == "RGB"
    assert image.size == (64, 48)
    assert close_to(centre(image), RED)


def test_multi_picture_jpeg_from_a_phone_is_accepted() -> None:
    frames = [Image.new("RGB", (64, 48), RED), Image.new("RGB", (64, 48), BLUE)]
    data = encode(frames[0], "MPO", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert close_to(centre(decode_image(data, SETTINGS)), RED)


def test_exif_orientation_is_applied() -> None:
    stored = Image.new("RGB", (60, 40), BLUE)
    stored.paste(RED, (0, 0, 10, 10))  # marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image = decode_image(encode(stored, "JPEG", exif=exif, quality=95), SETTINGS)
    assert image.size == (40, 60)
    assert close_to(image.getpixel((35, 4)), RED, 40)  # type: ignore[arg-type]
    assert close_to(image.getpixel((4, 4)), BLUE, 40)  # type: ignore[arg-type]


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)
    image = decode_image(data, SETTINGS)
    assert image.mode == "RGB"
    red, green, blue = centre(image)
    assert red > 200
    assert green < 60
    assert blue < 60


def test_16_bit_png_is_scaled_not_clipped() -> None:
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (8, 1))
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    image = decode_image(data, SETTINGS)
    assert image.mode == "RGB"
    row = [image.getpixel((x, 4)) for x in (0, 128, 255)]
    assert row[0] == (0, 0, 0)
    assert close_to(row[1], (128, 128, 128), 3)  # type: ignore[arg-type]
    assert row[2] == (255, 255, 255)


def test_32_bit_integer_tiff_with_16_bit_values_is_scaled() -> None:
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.int32), (8, 1))
    data = encode(Image.fromarray(ramp), "TIFF")
    image = decode_image(data, SETTINGS)
    assert close_to(image.getpixel((128, 4)), (128, 128, 128), 3)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_flattened_onto_white(mode: str) -> None:
    image = Image.new(mode, (20, 20), (0,) * len(mode))  # fully transparent black
    image.paste((0,) * (len(mode) - 1) + (255,), (0, 0, 10, 20))  # left half opaque black
    decoded = decode_image(encode(image, "PNG"), SETTINGS)
    assert decoded.mode == "RGB"
    assert decoded.getpixel((15, 10)) == (255, 255, 255)
    assert decoded.getpixel((5, 10)) == (0, 0, 0)


def test_palette_with_transparency_is_flattened_onto_white() -> None:
    image = Image.new("P", (20, 20), 0)
    image.putpalette([0, 0, 0, *RED] + [0] * 762)
    image.paste(1, (0, 0, 10, 20))
    decoded = decode_image(encode(image, "PNG", transparency=0), SETTINGS)
    assert decoded.getpixel((15, 10)) == (255, 255, 255)
    assert decoded.getpixel((5, 10)) == RED


def test_palette_without_transparency_keeps_its_colours() -> None:
    image = Image.new("RGB", (20, 20), BLUE).convert("P", palette=Image.Palette.ADAPTIVE)
    decoded = decode_image(encode(image, "PNG"), SETTINGS)
    assert close_to(centre(decoded), BLUE, 4)


def test_animated_gif_gives_the_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, BLUE, (30, 220, 30))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    assert close_to(centre(decode_image(data, SETTINGS)), RED)


def test_one_pixel_image() -> None:
    image = decode_image(encode(Image.new("RGB", (1, 1), RED), "PNG"), SETTINGS)
    assert image.size == (1, 1)


def test_downscale_keeps_aspect_and_caps_the_longest_side() -> None:
    data = encode(Image.new("RGB", (2000, 1000), RED), "PNG")
    assert decode_image(data, SETTINGS).size == (512, 256)
    tall = encode(Image.new("RGB", (300, 900), RED), "PNG")
    assert decode_image(tall, SETTINGS).size == (171, 512)


def test_large_jpeg_is_decoded_at_reduced_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    photo = Image.new("RGB", (4000, 3000), BLUE)
    photo.paste(RED, (0, 0, 2000, 3000))
    data = encode(photo, "JPEG", quality=85)
    decoded_at: list[tuple[int, int]] = []
    original_draft = JpegImageFile.draft

    def draft(self: JpegImageFile, mode: str | None, size: tuple[int, int] | None) -> Any:
        result = original_draft(self, mode, size)
        decoded_at.append(self.size)
        return result

    monkeypatch.setattr(JpegImageFile, "draft", draft)
    image = decode_image(data, SETTINGS)
    assert image.size == (512, 384)
    assert decoded_at == [(1000, 750)]  # 1/4 scale: still above 512 on the longest side
    assert close_to(image.getpixel((100, 192)), RED)  # type: ignore[arg-type]
    assert close_to(image.getpixel((400, 192)), BLUE)  # type: ignore[arg-type]


def test_truncated_jpeg_is_not_an_image() -> None:
    noise = Image.effect_noise((256, 256), 64).convert("RGB")
    data = encode(noise, "JPEG", quality=90)
    message = expect_error(data[: len(data) // 2], ErrorCode.NOT_AN_IMAGE)
    assert "truncated" in message


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"<!DOCTYPE html><html><body>Not found</body></html>",
        b"\x89PNG\r\n\x1a\n",  # a signature and nothing else
        b"\xff\xd8\xff" + b"\x00" * 100,
    ],
    ids=["empty", "html", "png-signature-only", "jpeg-magic-garbage"],
)
def test_non_images_are_not_an_image(data: bytes) -> None:
    expect_error(data, ErrorCode.NOT_AN_IMAGE)


def test_formats_outside_the_allow_list_are_refused() -> None:
    data = encode(Image.new("RGB", (32, 32), RED), "ICO")
    Image.open(io.BytesIO(data)).load()  # Pillow itself would read it
    assert "supported" in expect_error(data, ErrorCode.NOT_AN_IMAGE)


def test_huge_declared_size_is_refused_from_the_header() -> None:
    # 30000 x 30000 = 900 M pixels declared in a 90-byte file: decoding would need 2.7 GB.
    message = expect_error(png_header_only(30000, 30000), ErrorCode.IMAGE_TOO_LARGE)
    assert "too large" in message


def test_pixel_cap_is_ours_below_pillows_own_guard() -> None:
    # 64 M pixels: under Pillow's built-in bomb threshold (89 M), over our 50 M default.
    data = png_header_only(8000, 8000)
    message = expect_error(data, ErrorCode.IMAGE_TOO_LARGE, DecodeSettings())
    assert "8000x8000" in message


def test_pixel_cap_follows_settings() -> None:
    data = encode(Image.new("RGB", (20, 20), RED), "PNG")
    expect_error(data, ErrorCode.IMAGE_TOO_LARGE, DecodeSettings(max_pixels=399))
    assert decode_image(data, DecodeSettings(max_pixels=400)).size == (20, 20)


def test_pillows_bomb_warning_becomes_a_typed_error() -> None:
    # 100 M pixels is within our (raised) cap but in Pillow's warning band; under
    # filterwarnings=error that warning is an exception, which must not escape untyped.
    expect_error(
        png_header_only(10000, 10000), ErrorCode.IMAGE_TOO_LARGE, DecodeSettings(max_pixels=10**9)
    )


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [
        ("JPEG", "image/jpeg"),
        ("PNG", "image/png"),
        ("GIF", "image/gif"),
        ("WEBP", "image/webp"),
        ("BMP", "image/bmp"),
        ("TIFF", "image/tiff"),
    ],
)
def test_sniff_content_type(fmt: str, mime: str) -> None:
    assert sniff_content_type(encode(Image.new("RGB", (4, 4)), fmt)) == mime


@pytest.mark.parametrize("data", [b"", b"<html>", b"RIFF\x00\x00\x00\x00WAVEfmt "])
def test_sniff_content_type_of_non_images(data: bytes) -> None:
    assert sniff_content_type(data) is None


def test_decode_and_prepare_hands_the_decoded_image_to_prepare() -> None:
    seen: list[tuple[int, int]] = []

    def prepare(image: Image.Image) -> str:
        seen.append(image.size)
        return image.mode

    big = encode(Image.new("RGB", (2048, 1024), RED), "PNG")
    assert decode_and_prepare(big, SETTINGS, prepare, None) == "RGB"
    assert seen == [(512, 256)]  # downscaled to max_side before prepare sees it
    with pytest.raises(ItemError) as refused:
        decode_and_prepare(b"not an image", SETTINGS, prepare, None)
    assert refused.value.code is ErrorCode.NOT_AN_IMAGE
    assert len(seen) == 1
