"""Tiny generated images for tests: distinct JPEG/PNG bytes and a cheap 'pixel bomb' PNG header."""

from __future__ import annotations

import functools
import io
import struct
import zlib

from PIL import Image, ImageDraw


def _draw(width: int, height: int, seed: int) -> Image.Image:
    # a seed-dependent colour and box, so two images never share bytes by accident
    colour = ((seed * 67) % 256, (seed * 131 + 40) % 256, (seed * 29 + 90) % 256)
    img = Image.new("RGB", (width, height), colour)
    box = (width // 4, height // 4, width // 4 + max(1, width // 3), height // 4 + max(1, height // 3))
    ImageDraw.Draw(img).rectangle(box, fill=(255 - colour[0], 255 - colour[1], 255 - colour[2]))
    return img


def jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    _draw(width, height, seed).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    _draw(width, height, seed).save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache
def huge_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid, all-black 1-bit PNG of ``width`` x ``height``: tens of KB on disk, never decoded by PIL."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
