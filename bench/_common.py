"""Bench helpers: ViT-B/32- and ViT-L/14-sized CLIPs (random weights without the hub) and photo-like JPEGs."""

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
    return Path(real) if real else random_clip_folder(out, "b32")


# CLIPConfig arguments of the backbones the benches use with random weights (the defaults are ViT-B/32)
_SHAPES: dict[str, dict[str, Any]] = {
    "b32": {},
    "l14": {"projection_dim": 768,
            "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                              "num_attention_heads": 16, "patch_size": 14, "image_size": 224},
            "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                            "num_attention_heads": 12}},
}


def random_clip_folder(out: Path, shape: str = "b32", device: str = "cpu") -> Path:
    """A randomly initialised CLIP of a real backbone's shape (``b32``: ViT-B/32, ``l14``: ViT-L/14) in ``out``,
    with the tiny CLIP's tokenizer and CLIP's own 224 px preprocessing; ``device`` only speeds up the init."""
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from utils.tiny_clip import write_tiny_clip

    write_tiny_clip(out)  # tokenizer + processor files; the weights are replaced below
    torch.manual_seed(0)
    with torch.device(device):
        model = CLIPModel(CLIPConfig(**_SHAPES[shape])).eval()
    model.cpu().save_pretrained(out)
    CLIPImageProcessor().save_pretrained(out)  # 224 px, CLIP mean/std
    return out


def photo_jpegs(folder: Path, count: int, size: tuple[int, int] = (1000, 800), seed: int = 0) -> list[Path]:
    """Photo-like JPEGs: smooth colour fields, shapes and sensor noise (so they compress like photos).
    Made on every core when there are many (each from its own seed, so the set does not depend on that)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"photo_{i:04d}.jpg" for i in range(count)]
    jobs = [(p, size, seed, i) for i, p in enumerate(paths)]
    if count < 64:
        for job in jobs:
            _photo(job)
        return paths
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:
        list(pool.map(_photo, jobs, chunksize=16))
    return paths


def _photo(job: tuple[Path, tuple[int, int], int, int]) -> None:
    from PIL import Image, ImageDraw, ImageFilter

    path, size, seed, i = job
    rng = np.random.default_rng([seed, i])
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
    path.write_bytes(buf.getvalue())


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(median seconds over ``repeats`` runs, last result)."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result
