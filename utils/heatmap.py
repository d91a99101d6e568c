"""Heat-map overlays: a grid in [0, 1] coloured and blended over the square the model looked at."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

PANEL = 256
_GAP = 8
# a short dark-blue -> red -> yellow ramp (no colormap library needed)
_STOPS = np.array([[0, 0, 64], [0, 64, 192], [192, 0, 64], [255, 128, 0], [255, 255, 96]], dtype=np.float32)


def colorize(grid: np.ndarray, size: int) -> np.ndarray:
    """(h, w) in [0, 1] -> (size, size, 3) uint8, smoothly upsampled."""
    small = Image.fromarray((np.clip(grid, 0, 1) * 255).astype(np.uint8))
    values = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    pos = values * (len(_STOPS) - 1)
    low = np.clip(np.floor(pos).astype(int), 0, len(_STOPS) - 2)
    frac = (pos - low)[..., None]
    return (_STOPS[low] * (1 - frac) + _STOPS[low + 1] * frac).astype(np.uint8)


def centre_square(image: Image.Image, size: int = PANEL) -> Image.Image:
    """The centre square (what CLIP's centre crop sees), resized to ``size``."""
    img = image.convert("RGB")
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)


def overlay(image: Image.Image, grid: np.ndarray, *, alpha: float = 0.5, size: int = PANEL) -> Image.Image:
    base = np.asarray(centre_square(image, size), dtype=np.float32)
    heat = colorize(grid, size).astype(np.float32)
    weight = alpha * (0.35 + 0.65 * np.asarray(Image.fromarray((np.clip(grid, 0, 1) * 255).astype(np.uint8))
                                               .resize((size, size), Image.Resampling.BICUBIC),
                                               dtype=np.float32)[..., None] / 255)
    return Image.fromarray((base * (1 - weight) + heat * weight).astype(np.uint8))


def panels_png(panels: list[Image.Image]) -> bytes:
    """Panels side by side on white, as PNG bytes."""
    width = sum(p.width for p in panels) + _GAP * (len(panels) - 1)
    sheet = Image.new("RGB", (width, max(p.height for p in panels)), "white")
    x = 0
    for panel in panels:
        sheet.paste(panel, (x, 0))
        x += panel.width + _GAP
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
