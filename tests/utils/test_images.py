"""Image decoding: every mode becomes RGB, bombs and truncations are refused, large JPEGs shrink cheaply."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from utils.images import ImageDecodeError, ShapePolicy, decode_image, encode_jpeg


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid PNG header announcing width x height pixels, in a few hundred bytes."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("make", [
    lambda: _bytes(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"),
    lambda: _bytes(Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16)), "PNG"),
    lambda: _bytes(Image.new("RGB", (40, 30), "red").convert("P"), "PNG"),
    lambda: _bytes(Image.new("RGBA", (40, 30), (255, 0, 0, 0)), "PNG"),
    lambda: _bytes(Image.new("LA", (40, 30), (90, 255)), "PNG"),
    lambda: _bytes(Image.new("RGB", (40, 30), "blue"), "GIF", save_all=True,
                   append_images=[Image.new("RGB", (40, 30), "green")]),
    lambda: _bytes(Image.new("RGBA", (40, 30), (0, 0, 255, 128)), "WEBP"),
])
def test_every_mode_decodes_to_rgb(make):
    img = decode_image(make(), policy=ShapePolicy(max_pixels=10_000))
    assert img.mode == "RGB" and img.size == (40, 30)


def test_transparent_pixels_become_white():
    img = decode_image(_bytes(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG"), policy=ShapePolicy(max_pixels=1000))
    assert img.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"), (b"<html>hello</html>", "not an image"), (bomb_png(), "too many pixels"),
])
def test_refusals_have_stable_reasons(data, reason):
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data, policy=ShapePolicy(max_pixels=40_000_000))
    assert err.value.reason == reason


def test_truncated_jpeg():
    data = encode_jpeg(Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)))
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data[: len(data) // 2], policy=ShapePolicy(max_pixels=10**7))
    assert err.value.reason == "truncated image"


def test_large_jpeg_is_downscaled_to_the_shorter_side():
    data = encode_jpeg(Image.new("RGB", (2000, 1600), (10, 200, 30)))
    img = decode_image(data, policy=ShapePolicy(max_pixels=10**8), shorter_side=384)
    assert min(img.size) == 384 and img.size[0] == 480
    small = decode_image(encode_jpeg(Image.new("RGB", (100, 80))), policy=ShapePolicy(max_pixels=10**8),
                         shorter_side=384)
    assert small.size == (100, 80)  # never enlarged
