"""Benchmark: embedding 128 photos with the naive CLIPProcessor + fp32 path vs our pipeline's path.

Ours runs the real pipeline phases (validation, download of local files with draft-mode decode and
downscale into the cache, extraction from the cache into the catalogue store) from the same raw
JPEGs each repeat, with a fresh cache and store every time. Prints images/s for each, the ratio
and the minimum cosine between our embeddings and the fp32 reference, then one JSON line.
"""

from __future__ import annotations

from collections.abc import Callable

import argparse
import csv
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import photo_jpegs, timed, vit_b32_folder  # noqa: E402


def _naive(model_dir: Path, files: list[Path], batch: int = 16) -> Callable[[], np.ndarray]:
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    processor = CLIPProcessor.from_pretrained(model_dir)
    model = CLIPModel.from_pretrained(model_dir).eval()

    def run() -> np.ndarray:
        out = []
        for i in range(0, len(files), batch):
            images = [Image.open(f).convert("RGB") for f in files[i:i + batch]]
            with torch.no_grad():
                feats = model.get_image_features(**processor(images=images, return_tensors="pt"))
            feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
            out.append(feats.numpy())
        vectors = np.concatenate(out)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    return run


def _ours(model_dir: Path, files: list[Path], work: Path):
    from core.config import load_settings
    from core.encoder import ClipEncoder
    from core.model_config import ModelSpec
    from pipeline.base import PipelineContext
    from pipeline.download import DownloadPhase
    from pipeline.extraction import ExtractionPhase
    from pipeline.validation import ValidationPhase

    settings = load_settings(root=work, clip_model=str(model_dir))
    encoder = ClipEncoder.from_settings(settings)  # loaded once, like the naive model
    spec = ModelSpec(name="bench")
    data = spec.paths(settings).data
    data.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, data / f.name)
    with open(data / "products.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["shopify_product_id", "title", "images", "category"])
        writer.writerows([f.stem, f.stem, f.name, "photo"] for f in files)

    def run() -> np.ndarray:
        for folder in (spec.paths(settings).models, spec.paths(settings).checkpoints, data / "image_cache"):
            shutil.rmtree(folder, ignore_errors=True)  # no cache reuse between repeats
        ctx = PipelineContext(settings=settings, spec=spec, progress=False, _encoder=encoder)
        try:
            for phase in (ValidationPhase(), DownloadPhase(), ExtractionPhase()):
                phase.run(ctx)
            return ctx.store().vectors([f.stem for f in files], clip=True)  # the products' raw CLIP vectors
        finally:
            ctx.close()

    return run, encoder.precision_name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_dir = vit_b32_folder(tmp / "vit-b32")
        files = photo_jpegs(tmp / "raw", args.images)
        naive_run = _naive(model_dir, files)
        ours_run, precision = _ours(model_dir, files, tmp / "root")
        naive_run(), ours_run()  # warm-up: lazy init, allocator, first-call overheads
        naive_s, reference = timed(naive_run, args.repeats)
        ours_s, ours = timed(ours_run, args.repeats)
    min_cos = float(np.min(np.sum(reference * ours, axis=1)))
    naive_ips, ours_ips = args.images / naive_s, args.images / ours_s
    print(f"naive (CLIPProcessor, fp32, batch 16, full decode): {naive_ips:7.1f} images/s")
    print(f"ours  (draft decode, cache, {precision}, pipeline):     {ours_ips:7.1f} images/s")
    print(f"ratio {ours_ips / naive_ips:.2f}x, min cosine vs fp32 reference {min_cos:.5f}")
    print(json.dumps({"benchmark": "extraction", "images": args.images, "repeats": args.repeats,
                      "naive_images_per_s": round(naive_ips, 2), "ours_images_per_s": round(ours_ips, 2),
                      "ratio": round(ours_ips / naive_ips, 3), "min_cosine": round(min_cos, 5),
                      "precision": precision}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
