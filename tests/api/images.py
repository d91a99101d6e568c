"""Query images for the API tests, generated with PIL as the tests run."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _gradient(size=(96, 80)) -> Image.Image:
    img = Image.new("RGB", size)
    img.putdata([(x * 255 // size[0], y * 255 // size[1], 128) for y in range(size[1]) for x in range(size[0])])
    return img


def jpeg() -> bytes:
    return _save(_gradient(), "JPEG", quality=90)


def cmyk_jpeg() -> bytes:
    return _save(_gradient().convert("CMYK"), "JPEG")


def png_16bit() -> bytes:
    img = Image.new("I;16", (64, 48))
    img.putdata([(x * 1000) % 65535 for x in range(64 * 48)])
    return _save(img, "PNG")


def palette_png() -> bytes:
    return _save(_gradient().convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG")


def rgba_png() -> bytes:
    img = _gradient().convert("RGBA")
    img.putalpha(Image.new("L", img.size, 100))
    return _save(img, "PNG")


def animated_gif() -> bytes:
    frames = [_gradient().rotate(a).convert("P") for a in (0, 90, 180)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def animated_webp() -> bytes:
    frames = [_gradient().rotate(a) for a in (0, 45)]
    return _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100)


def webp() -> bytes:
    return _save(_gradient(), "WEBP")


def truncated_jpeg() -> bytes:
    data = _save(_gradient((400, 300)), "JPEG", quality=95)
    return data[: len(data) // 2]


def bomb_png(side: int = 20000) -> bytes:
    """A tiny file that claims ``side`` x ``side`` pixels: a hand-written 1-bit PNG of one compressed row."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    pixels = zlib.compress(row * 64, 9)  # only 64 rows present: the decoder would choke long before
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
