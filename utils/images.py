"""Safe, fast image decoding: size limits, bomb checks, mode normalisation and draft-mode downscaling; and the
one image-shape policy (pixels, aspect ratio, longest side), judged from an image's header before anything is
decoded: every path where an image enters (search, explain, admin upsert, the build's download) and every path
that reads a cached copy back asks it."""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

# The longest side JPEG can hold (the image cache writes JPEG; PIL refuses to encode more, with an
# ``OSError: broken data stream`` that used to abort every build).
MAX_SIDE = 65_500


@dataclass(frozen=True)
class ShapeRefusal:
    """Why an image is refused: ``reason`` is a short, stable label (reports count by it), ``detail``
    the figures."""

    reason: str
    detail: str


@dataclass(frozen=True)
class ShapePolicy:
    """What an image may look like, whatever its format or file size (a 28-megapixel PNG strip is 83 KB).

    ``max_aspect`` bounds memory downstream: CLIP scales the *shorter* side up to its input size, so a
    20000x1 strip would become a 4,480,000 x 224 array."""

    max_pixels: int = 40_000_000
    max_aspect: float = 20.0
    max_side: int = MAX_SIDE

    def refusal(self, width: int, height: int, *, copy: bool = False) -> ShapeRefusal | None:
        """None when a ``width`` x ``height`` image is acceptable, else why not. ``copy``: the image is our
        own downscaled copy of an accepted original, whose sides may have rounded by one pixel."""
        if width <= 0 or height <= 0:
            return ShapeRefusal("not an image", f"{width}x{height}")
        if width * height > self.max_pixels:
            return ShapeRefusal("too many pixels", f"{width}x{height} exceeds {self.max_pixels} pixels")
        long, short = max(width, height), min(width, height)
        if long - (1 if copy else 0) > self.max_aspect * short:
            return ShapeRefusal("extreme aspect ratio",
                                f"{width}x{height} is more elongated than {self.max_aspect:g}:1")
        if long > self.max_side:
            return ShapeRefusal("side too long", f"{width}x{height}: a side is over {self.max_side} px")
        return None


# We enforce our own pixel limit before decoding; PIL's global limit would only warn below 2x.
Image.MAX_IMAGE_PIXELS = None


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; ``reason`` is a short, stable label for reports."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _open_checked(data: bytes, policy: ShapePolicy) -> Image.Image:
    """Open lazily (header only) and hold the image to ``policy`` before a pixel is decoded."""
    if not data:
        raise ImageDecodeError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Exception as exc:  # PIL raises many types for garbage input
        raise ImageDecodeError("not an image", type(exc).__name__) from None
    check_shape(img, policy)
    return img


def check_shape(img: Image.Image, policy: ShapePolicy, *, copy: bool = False) -> None:
    """Raise ImageDecodeError when an opened (not yet decoded) image breaks ``policy``; ``copy``: it is our
    own downscaled copy (see ShapePolicy.refusal)."""
    refused = policy.refusal(*img.size, copy=copy)
    if refused is not None:
        raise ImageDecodeError(refused.reason, refused.detail)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (CMYK, 16-bit, palette, alpha, LA) -> RGB; transparency composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything to white.
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() if arr.size else 0
        scale = 255.0 / top if top > 255 else 1.0
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype("uint8"), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def decode_image(data: bytes, *, policy: ShapePolicy, shorter_side: int | None = None) -> Image.Image:
    """Decode ``data`` into an RGB image, optionally downscaled so its shorter side is ``shorter_side``.

    JPEGs are decoded at a reduced DCT scale when that is enough (PIL ``draft``), so a large
    photo is never fully decoded just to be shrunk. An image that breaks ``policy`` is refused from its
    header, before decoding. Raises ImageDecodeError with a reason.
    """
    img = _open_checked(data, policy)
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # animated GIF/WebP/PNG: the first frame stands for the product
        if shorter_side:
            draft(img, shorter_side)
        img.load()
        img = ImageOps.exif_transpose(img) if img.format == "JPEG" else img
        img = to_rgb(img)
    except ImageDecodeError:
        raise
    except Exception as exc:
        message = str(exc).lower()
        reason = "truncated image" if "truncated" in message or isinstance(exc, EOFError) else "corrupt image"
        raise ImageDecodeError(reason, type(exc).__name__) from None
    if shorter_side:
        img = downscale(img, shorter_side)
    return img


def draft(img: Image.Image, shorter_side: int) -> None:
    """Let a JPEG decode at the smallest DCT scale (1/2, 1/4, 1/8) that keeps its shorter side at least
    ``shorter_side``: the decoder then skips most of the work. Call before ``load``; other formats ignore it."""
    if img.format != "JPEG":
        return
    w, h = img.size
    scale = min(w, h) / shorter_side
    if scale >= 2:
        img.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))


def model_view(img: Image.Image, size: int, crop: int, *, resize: bool = True) -> np.ndarray:
    """CLIP's view of ``img`` as uint8 HWC: the centre square that a resize of the shorter side to ``size``
    followed by a ``crop`` x ``crop`` centre crop would keep, resized straight to ``crop`` x ``crop`` in one
    bicubic pass (the reference resizes the whole image, then crops). ``resize=False`` returns that square at
    the image's own resolution instead, for a caller that resizes on the GPU."""
    img = img if img.mode == "RGB" else img.convert("RGB")
    w, h = img.size
    side = min(w, h) * crop / size  # the square's side in this image's pixels
    left, top = (w - side) / 2, (h - side) / 2
    if resize:
        img = img.resize((crop, crop), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
    else:
        s = max(1, round(side))
        x, y = max(0, round((w - s) / 2)), max(0, round((h - s) / 2))
        img = img.crop((x, y, x + s, y + s))
    return np.asarray(img)


def read_model_view(source: str | Path | IO[bytes], size: int, crop: int, *, resize: bool = True,
                    policy: ShapePolicy | None = None) -> np.ndarray:
    """``model_view`` of an image file of ours (a cached copy: a path or a binary file object), a JPEG decoded
    at the smallest DCT scale that still covers ``size``; a copy that breaks ``policy`` (cached before it) raises
    ImageDecodeError before anything is decoded."""
    with Image.open(source) as img:
        if policy is not None:
            check_shape(img, policy, copy=True)
        draft(img, size)
        return model_view(img, size, crop, resize=resize)


def downscale(img: Image.Image, shorter_side: int) -> Image.Image:
    """Shrink so the shorter side is ``shorter_side`` (never enlarges)."""
    w, h = img.size
    short = min(w, h)
    if short <= shorter_side:
        return img
    ratio = shorter_side / short
    size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
    return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
