"""Fixtures for quality tests: a built model folder written by hand (no pipeline needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.model_config import ModelSpec
from utils.atomic import save_npy_atomic, write_json_atomic, write_jsonl_atomic

PALETTE = {"red": (200, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 210), "yellow": (230, 210, 40)}


def _product_image(rng: np.random.Generator, colour: tuple[int, int, int]):
    from PIL import Image

    base = np.array(colour, dtype=np.float32)[None, None, :]
    noisy = base + rng.normal(0, 18, size=(80, 96, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def write_model_files(settings, name: str, vectors: np.ndarray, categories: list, *, previews=None,
                      clip_vectors=None) -> ModelSpec:
    """Write the on-disk contract of a built model; ``previews`` maps row -> cached JPEG name."""
    spec = ModelSpec(name=name)
    paths = spec.paths(settings)
    ids = [f"p{i}" for i in range(len(vectors))]
    save_npy_atomic(paths.clip_embeddings, (vectors if clip_vectors is None else clip_vectors).astype(np.float32))
    write_json_atomic(paths.models / "embedding_ids.json", ids)
    save_npy_atomic(paths.embeddings, vectors.astype(np.float32))
    rows = [{"id": pid, "title": f"product {pid}", "category": cat, "preview_image": None,
             "preview_cache": (previews or {}).get(i), "images": [], "extra": {}}
            for i, (pid, cat) in enumerate(zip(ids, categories, strict=True))]
    write_jsonl_atomic(paths.metadata, rows)
    # the pipeline's own inputs too, so the real index phase can rebuild this model
    products = [{**{k: r[k] for k in ("id", "title", "category", "extra")}, "preview_image": f"img/{r['id']}.jpg",
                 "images": [f"img/{r['id']}.jpg"]} for r in rows]
    write_json_atomic(paths.processed_products, {"model": name, "products": products})
    write_json_atomic(paths.models / "images.json", {"images": {
        p["preview_image"]: {"status": "ok", "cache": r["preview_cache"]}
        for p, r in zip(products, rows, strict=True)}})
    write_json_atomic(paths.manifest, {"num_products": len(ids), "dim": int(vectors.shape[1]), "head": None,
                                       "backbone": settings.clip_model, "index_type": "flat", "metric": "cosine"})
    return spec


@pytest.fixture(scope="session")
def tiny_encoder(tiny_clip):
    from core.encoder import ClipEncoder
    from core.types import Device, Precision

    return ClipEncoder(str(tiny_clip), device=Device.CPU, precision=Precision.FP32, threads=1)


@pytest.fixture
def image_model(make_settings, tiny_encoder):
    """A built model of coloured product photos: its vectors are the tiny CLIP's own embeddings."""

    def build(counts: dict[str, int], name: str = "shop", **overrides):
        settings = make_settings(**overrides)
        rng = np.random.default_rng(0)
        cache = settings.data_dir / name / "image_cache"
        cache.mkdir(parents=True, exist_ok=True)
        images, categories, previews = [], [], {}
        for colour, count in counts.items():
            for _ in range(count):
                row = len(images)
                images.append(_product_image(rng, PALETTE[colour]))
                images[-1].save(cache / f"{row:04d}.jpg", quality=90)
                previews[row] = f"{row:04d}.jpg"
                categories.append(colour)
        vectors = tiny_encoder.encode_images(images)
        spec = write_model_files(settings, name, vectors, categories, previews=previews)
        return settings, spec

    return build


def read_json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def buried_signal_catalogue(n_cat: int = 6, per: int = 40, dim: int = 32, signal_dims: int = 4,
                            noise: float = 0.8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors whose categories separate along ``signal_dims`` directions but drown in noise
    along the others, so raw cosine ranks poorly and a learned reweighting ranks well."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_cat, signal_dims))
    labels = np.repeat(np.arange(n_cat), per)
    x = rng.standard_normal((len(labels), dim)) * noise
    x[:, :signal_dims] = centres[labels] + rng.standard_normal((len(labels), signal_dims)) * 0.3
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels
