"""Safe, fast image decoding: size limits, bomb checks, mode normalisation and draft-mode downscaling."""

from __future__ import annotations

import io
import math
import warnings

from PIL import Image, ImageOps

from utils.image_shape import ShapePolicy

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
        import numpy as np

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
        if shorter_side and img.format == "JPEG":
            w, h = img.size
            scale = min(w, h) / shorter_side
            if scale >= 2:
                img.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))
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
