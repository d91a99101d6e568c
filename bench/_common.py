"""Bench helpers: a ViT-B/32-sized CLIP (random weights when the hub is out of reach) and photo-like JPEGs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import io
import os
import statistics
import time
from pathlib import Path

import numpy as np


def vit_b32_folder(out: Path) -> Path:
    """IMAGESEARCH_BENCH_MODEL if set (real weights), else a randomly initialised ViT-B/32 CLIP in ``out``."""
    real = os.environ.get("IMAGESEARCH_BENCH_MODEL")
    if real:
        return Path(real)
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from utils.tiny_clip import write_tiny_clip

    write_tiny_clip(out)  # tokenizer + processor files; the weights are replaced below
    torch.manual_seed(0)
    CLIPModel(CLIPConfig()).eval().save_pretrained(out)  # defaults = ViT-B/32 architecture, 512-d
    CLIPImageProcessor().save_pretrained(out)  # 224 px, CLIP mean/std
    return out


def photo_jpegs(folder: Path, count: int, size: tuple[int, int] = (1000, 800), seed: int = 0) -> list[Path]:
    """Photo-like JPEGs: smooth colour fields, shapes and sensor noise (so they compress like photos)."""
    from PIL import Image, ImageDraw, ImageFilter

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        base = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(base)
        for _ in range(6):
            x, y = int(rng.integers(0, size[0])), int(rng.integers(0, size[1]))
            r = int(rng.integers(40, 250))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        img = base.filter(ImageFilter.GaussianBlur(2))
        noisy = np.clip(np.asarray(img, dtype=np.int16) + rng.integers(-12, 12, (size[1], size[0], 3)), 0, 255)
        buf = io.BytesIO()
        Image.fromarray(noisy.astype(np.uint8)).save(buf, format="JPEG", quality=90)
        paths.append(folder / f"photo_{i:04d}.jpg")
        paths[-1].write_bytes(buf.getvalue())
    return paths


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(median seconds over ``repeats`` runs, last result)."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result
