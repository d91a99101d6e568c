"""The one image-shape policy (pixels, aspect ratio, longest side), judged from an image's header before
anything is decoded: every path where an image enters (search, explain, admin upsert, the build's
download) and every path that reads a cached copy back asks it."""

from __future__ import annotations

from dataclasses import dataclass

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
