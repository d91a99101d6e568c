"""Benchmark: one "Why this match?" explanation (query + hit heat-maps and the PNG) at ViT-B/32 size.

Times our path (one forward of the pair with autograd, one backward of their cosine, Grad-CAM on the
last block's input, overlay PNG) against occlusion, the model-agnostic baseline (an 7x7 grid of grey
patches over the hit, one batched forward of the 49 masked copies plus the query). Prints both
medians, a plain forward of the pair for scale (a loaded machine slows every figure alike),
the ratio and whether ours meets the 2 s target, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import photo_jpegs, timed, vit_b32_folder  # noqa: E402

TARGET_S = 2.0


def _occlusion(encoder, query, hit, cells: int = 7) -> np.ndarray:
    """Similarity drop when each cell of the hit is greyed out (the baseline)."""
    q, h = encoder.pixels(query), encoder.pixels(hit)
    side = h.shape[0] // cells
    masked = []
    for i in range(cells):
        for j in range(cells):
            copy = h.copy()
            copy[i * side:(i + 1) * side, j * side:(j + 1) * side] = 123  # grey, about the dataset mean
            masked.append(copy)
    vectors = encoder.encode_pixels(np.stack([q, h, *masked]))
    base = float(vectors[0] @ vectors[1])
    return (base - vectors[2:] @ vectors[0]).reshape(cells, cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    from PIL import Image

    from core.config import load_settings
    from core.encoder import ClipEncoder
    from core.explain import explain_images
    from utils.heatmap import overlay, panels_png

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_dir = vit_b32_folder(tmp / "vit-b32")
        query_path, hit_path = photo_jpegs(tmp / "raw", 2)
        encoder = ClipEncoder.from_settings(load_settings(clip_model=str(model_dir), device="cpu"))
        query, hit = Image.open(query_path).convert("RGB"), Image.open(hit_path).convert("RGB")

        def ours() -> bytes:
            found = explain_images(encoder, query, hit)
            return panels_png([overlay(query, found.query), overlay(hit, found.hit)])

        pair = np.stack([encoder.pixels(query), encoder.pixels(hit)])
        ours(), _occlusion(encoder, query, hit), encoder.encode_pixels(pair)  # warm-up
        ours_s, png = timed(ours, args.repeats)
        occ_s, _ = timed(lambda: _occlusion(encoder, query, hit), args.repeats)
        forward_s, _ = timed(lambda: encoder.encode_pixels(pair), args.repeats)
    print(f"occlusion (7x7, batched, {encoder.precision_name}): {occ_s * 1000:8.1f} ms")
    print(f"ours (Grad-CAM, autograd, {encoder.precision_name}): {ours_s * 1000:8.1f} ms  PNG {len(png)} bytes")
    print(f"plain forward of the pair (no explanation): {forward_s * 1000:8.1f} ms; "
          f"ours costs {ours_s / forward_s:.2f}x that")
    print(f"ratio {occ_s / ours_s:.2f}x faster; target < {TARGET_S} s: {'met' if ours_s < TARGET_S else 'MISSED'}")
    print(json.dumps({"benchmark": "explain", "repeats": args.repeats, "ours_ms": round(ours_s * 1000, 1),
                      "occlusion_ms": round(occ_s * 1000, 1),
                      "pair_forward_ms": round(forward_s * 1000, 1),
                      "vs_forward": round(ours_s / forward_s, 3), "ratio": round(occ_s / ours_s, 3),
                      "precision": encoder.precision_name, "target_met": ours_s < TARGET_S}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
