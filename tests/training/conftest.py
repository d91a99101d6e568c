"""Fixtures for quality tests: a built model's catalogue store written directly (no pipeline needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.catalogue_store import open_store
from core.model_config import ModelSpec
from core.store import Product, ProductVector, Source

PALETTE = {"red": (200, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 210), "yellow": (230, 210, 40)}


def _product_image(rng: np.random.Generator, colour: tuple[int, int, int]):
    from PIL import Image

    base = np.array(colour, dtype=np.float32)[None, None, :]
    noisy = base + rng.normal(0, 18, size=(80, 96, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def store_model(settings, name: str, vectors: np.ndarray, categories: list, *, previews=None,
                source=Source.CSV) -> ModelSpec:
    """A built model's catalogue store, written directly: product ``p<i>`` has CLIP vector ``vectors[i]``,
    category ``categories[i]`` and, where ``previews`` maps ``i`` to a cached JPEG name, that preview."""
    spec = ModelSpec(name=name)
    store = open_store(settings, spec, open_index=False)
    try:
        store.upsert([ProductVector(Product(id=f"p{i}", title=f"product p{i}", category=cat or "",
                                            images=(f"img/p{i}.jpg",), preview_image=f"img/p{i}.jpg",
                                            preview_cache=(previews or {}).get(i), source=source),
                                    clip=np.asarray(vec, dtype=np.float32))
                      for i, (vec, cat) in enumerate(zip(vectors, categories, strict=True))])
    finally:
        store.close()
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
        spec = store_model(settings, name, vectors, categories, previews=previews)
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
