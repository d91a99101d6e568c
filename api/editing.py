"""Admin edits without a full rebuild: embed one product, update the vectors, rebuild the FAISS index
from them (same type), write everything atomically (manifest last), then swap the snapshot in."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.config import Settings
from core.encoder import l2_normalize
from core.errors import BadImageError, BadRequestError
from core.types import IndexType, Metric
from core.vector_index import IndexBundle, build_index, write_index_bundle
from pipeline.download import fetch_policy, read_ref
from pipeline.image_cache import ImageCache
from utils.atomic import save_npy_atomic
from utils.http_fetch import FetchError, Fetcher
from utils.images import ImageDecodeError

from api.catalogue import Catalogue
from api.loaded import LoadedModel, file_signature, snapshot
from api.schemas import ProductUpsert

logger = logging.getLogger(__name__)


@dataclass
class _Fetched:
    images: list[Image.Image]
    cached: list[str]  # names in the image cache, one per image
    failed: dict[str, str]


def _fetch_images(refs: list[str], settings: Settings, data_dir: Path, cache: ImageCache) -> _Fetched:
    """Fetch and cache each view as the download phase does; keep the cache names of those that worked."""
    got = _Fetched(images=[], cached=[], failed={})
    with Fetcher(fetch_policy(settings)) as fetcher:
        for ref in refs:
            try:
                entry = cache.store(read_ref(ref, data_dir, fetcher, settings.max_image_bytes))
            except (FetchError, ImageDecodeError) as exc:
                got.failed[ref] = exc.reason
                continue
            with Image.open(cache.root / entry["cache"]) as img:  # embed the cached copy, like extraction
                got.images.append(img.convert("RGB"))
            got.cached.append(entry["cache"])
    if not got.images:
        listed = "; ".join(f"{r}: {why}" for r, why in got.failed.items())
        raise BadImageError(f"none of the product's images could be used ({listed})")
    return got


def _metadata_row(product: ProductUpsert, preview_cache: str) -> dict[str, Any]:
    return {"id": product.id, "title": product.title, "category": product.category,
            "preview_image": product.images[0], "preview_cache": preview_cache, "images": list(product.images),
            "extra": dict(product.extra)}


def _upsert_rows(ids: list[str], vectors: np.ndarray, key: str, vector: np.ndarray) -> tuple[list[str], np.ndarray]:
    if key in ids:
        vectors = vectors.copy()
        vectors[ids.index(key)] = vector
        return ids, vectors
    return [*ids, key], np.vstack([vectors, vector.reshape(1, -1)])


def _drop_rows(ids: list[str], vectors: np.ndarray, key: str) -> tuple[list[str], np.ndarray]:
    keep = [i for i, k in enumerate(ids) if k != key]
    return [ids[i] for i in keep], vectors[keep]


def _persist(catalogue: Catalogue, current: LoadedModel, vectors: np.ndarray,
             metadata: list[dict[str, Any]]) -> LoadedModel:
    """Write the edited bundle. The pipeline's own outputs (clip_embeddings.npy, embedding_ids.json)
    are left alone: edits are an overlay on the index that lasts until the model is rebuilt from its CSV."""
    settings = catalogue.settings
    paths = current.spec.paths(settings)
    manifest = dict(current.manifest)
    index_type = IndexType(manifest.get("index_type", IndexType.AUTO))
    index = build_index(vectors, index_type, Metric(manifest.get("metric", Metric.COSINE)), settings)
    save_npy_atomic(paths.embeddings, vectors)
    manifest.pop("built_at", None)
    written = write_index_bundle(paths, index, metadata, manifest)
    bundle = IndexBundle(index=index, metadata=metadata, manifest=written)
    emb = np.load(paths.embeddings, mmap_mode="r", allow_pickle=False)
    fresh = snapshot(current.spec, current.backbone, bundle, current.head, emb, file_signature(paths))
    catalogue.install(fresh)
    return fresh


def upsert_product(catalogue: Catalogue, model: str, product: ProductUpsert) -> tuple[LoadedModel, dict[str, str]]:
    """Add or replace one product. Blocking (fetch, embed, rebuild): call it from a worker thread."""
    settings = catalogue.settings
    current = catalogue.model(model).require()
    paths = current.spec.paths(settings)
    fetched = _fetch_images(product.images, settings, paths.data, ImageCache(paths.image_cache, settings))
    embedder = catalogue.embedder(current.backbone)
    clip_vector = l2_normalize(embedder.embed_images(fetched.images).mean(axis=0, keepdims=True))[0]
    vector = current.head.apply(clip_vector[None])[0] if current.head is not None else clip_vector
    row = _metadata_row(product, fetched.cached[0])
    with catalogue.admin_lock(model):
        current = catalogue.model(model).require()  # the latest snapshot, now that we hold the lock
        existed = product.id in current.positions
        metadata = list(current.require_bundle().metadata)
        ids = [str(r.get("id")) for r in metadata]
        ids, vectors = _upsert_rows(ids, current.vectors(), product.id, vector)
        pos = ids.index(product.id)
        metadata = metadata + [row] if pos == len(metadata) else metadata[:pos] + [row] + metadata[pos + 1:]
        fresh = _persist(catalogue, current, vectors, metadata)
    logger.info("admin: %s product %s in %s (%d images, %d failed)", "updated" if existed else "added",
                product.id, model, len(fetched.images), len(fetched.failed))
    return fresh, fetched.failed


def delete_product(catalogue: Catalogue, model: str, product_id: str) -> LoadedModel:
    """Remove one product from the index and every vector table. Blocking: run in a worker thread."""
    with catalogue.admin_lock(model):
        current = catalogue.model(model).require()
        current.position(product_id)  # 404 when absent
        if current.num_products <= 1:
            raise BadRequestError(f"cannot delete the last product of {model!r}; rebuild the model instead")
        rows = current.require_bundle().metadata
        metadata = [r for r in rows if str(r.get("id")) != product_id]
        ids = [str(r.get("id")) for r in rows]
        ids, vectors = _drop_rows(ids, current.vectors(), product_id)
        fresh = _persist(catalogue, current, vectors, metadata)
    logger.info("admin: deleted product %s from %s", product_id, model)
    return fresh
