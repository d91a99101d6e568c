"""Admin edits without a rebuild: fetch and embed one product, then upsert it (or delete it) in one store
transaction; the store applies it to its index in place, so it is searchable when the call returns."""

from __future__ import annotations

import errno
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from core.config import Settings
from core.errors import BadImageError, BadRequestError, StorageFullError
from core.store import ModelStore, Product, ProductViews, Source, product_vectors
from pipeline.image_cache import ImageCache, cache_key, fetch_policy, read_ref
from pipeline.state import BuildState, ImageRecord
from utils.http_fetch import FetchError, Fetcher
from utils.images import ImageDecodeError

from api.catalogue import Catalogue
from api.loaded import ServedModel
from api.schemas import ProductUpsert

logger = logging.getLogger(__name__)


@dataclass
class _Fetched:
    images: list[Image.Image]
    cached: list[str]  # names in the image cache, one per image
    failed: dict[str, str]
    views: list[str]  # the cache name of each ref, in order ('' for one that failed): the product's view caches
    records: list[ImageRecord]  # for the build state, where this machine keeps one (a build then reuses them)


def _fetch_images(refs: list[str], settings: Settings, data_dir: Path, cache: ImageCache) -> _Fetched:
    """Fetch and cache each view as the download phase does; keep the cache names of those that worked."""
    got = _Fetched(images=[], cached=[], failed={}, views=[], records=[])
    with Fetcher(fetch_policy(settings)) as fetcher:
        for ref in refs:
            try:
                entry = cache.store(read_ref(ref, data_dir, fetcher, settings.max_image_bytes))
            except (FetchError, ImageDecodeError) as exc:
                got.failed[ref] = exc.reason
                got.views.append("")
                continue
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise StorageFullError(data_dir.name, f"the disk holding {cache.root} is full") from None
                raise
            got.views.append(entry["cache"])
            got.records.append(ImageRecord(ref=ref, status="ok", cache=entry["cache"], width=entry["width"],
                                           height=entry["height"], bytes=entry["bytes"]))
            with Image.open(cache.root / entry["cache"]) as img:  # embed the cached copy, like extraction
                got.images.append(img.convert("RGB"))
            got.cached.append(entry["cache"])
    if not got.images:
        listed = "; ".join(f"{r}: {why}" for r, why in got.failed.items())
        raise BadImageError(f"none of the product's images could be used ({listed})")
    return got


def _product(product: ProductUpsert, fetched: _Fetched) -> Product:
    return Product(id=product.id, title=product.title, category=product.category or "", images=tuple(product.images),
                   preview_image=product.images[0], preview_cache=fetched.cached[0], extra=dict(product.extra),
                   source=Source.API, view_caches=tuple(fetched.views))


def upsert_product(catalogue: Catalogue, model: str,
                   product: ProductUpsert) -> tuple[ServedModel, dict[str, str], float, int]:
    """Add or replace one product: fetch and embed its images (no lock held), then one store transaction.
    Returns the model, the images that failed, the milliseconds from the store write until the product was
    searchable and the catalogue's generation after it. Blocking: call it from a worker thread."""
    settings = catalogue.settings
    current = catalogue.model(model)
    current.require()
    paths = current.spec.paths(settings)
    fetched = _fetch_images(product.images, settings, paths.data, ImageCache(paths.image_cache, settings))
    embedder = catalogue.embedder(current.backbone)
    views = ProductViews(_product(product, fetched), embedder.embed_images(fetched.images))
    with catalogue.admin_lock(model):
        current = catalogue.model(model)  # the latest snapshot (a reload may have swapped the store)
        store = current.require()
        existed = bool(store.get([product.id]))
        start = time.perf_counter()
        store.upsert(product_vectors([views], store.head))
        commit_ms = (time.perf_counter() - start) * 1000
        generation = store.generation()  # this edit's: writers of the model take turns under the admin lock
        _note_fetched(store, fetched.records, settings)
    logger.info("admin: %s product %s in %s (%d images, %d failed)", "updated" if existed else "added",
                product.id, model, len(fetched.images), len(fetched.failed))
    return current, fetched.failed, commit_ms, generation


def _note_fetched(store: ModelStore, records: list[ImageRecord], settings: Settings) -> None:
    """Record the fetched images in the build state where this machine keeps one (a build reuses them)."""
    state = BuildState.kept(store)
    if state is not None:
        try:
            state.record(records, json.dumps(cache_key(settings), sort_keys=True))
        finally:
            state.close()


def delete_product(catalogue: Catalogue, model: str, product_id: str) -> tuple[ServedModel, float, int]:
    """Remove one product; returns the model, the milliseconds the store write took until the product was
    gone from searches and the catalogue's generation after it. Blocking: run it in a worker thread."""
    with catalogue.admin_lock(model):
        current = catalogue.model(model)
        current.product(product_id)  # 404 when absent
        if current.num_products <= 1:
            raise BadRequestError(f"cannot delete the last product of {model!r}; rebuild the model instead")
        start = time.perf_counter()
        store = current.require()
        store.delete([product_id])
        commit_ms = (time.perf_counter() - start) * 1000
        generation = store.generation()
    logger.info("admin: deleted product %s from %s", product_id, model)
    return current, commit_ms, generation
