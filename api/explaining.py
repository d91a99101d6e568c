"""Why this match: heat-maps for a query image and one hit, cached on disk by model, query digest and
product (the product's cached picture and the backbone are part of the key, so a changed product or
backbone is explained afresh). torch runs on the backbone's batcher thread, like every other query."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from pathlib import Path

from anyio import to_thread
from PIL import Image

from core.config import Settings
from core.errors import ImageNotAvailableError
from core.explain import Explanation, explain_images
from utils.atomic import write_bytes_atomic
from utils.heatmap import PANEL, overlay, panels_png
from utils.images import ImageDecodeError, check_shape

from api.embedder import Embedder, decode_query
from api.loaded import ServedModel

logger = logging.getLogger(__name__)

VIEWS = ("both", "hit", "query")


def cache_key(model: ServedModel, query: bytes, product_id: str, preview_cache: str) -> str:
    query_digest = hashlib.sha256(query).hexdigest()[:32]
    product = hashlib.sha256(f"{product_id}\0{preview_cache}\0{model.backbone}".encode()).hexdigest()[:16]
    return f"{query_digest}-{product}"


class ExplainCache:
    """``models/<m>/explain_cache/<key>.json`` (the grids) and ``<key>-<view>.png``; the oldest files go
    once there are more than ``max_files``."""

    def __init__(self, folder: Path, max_files: int) -> None:
        self.folder = folder
        self.max_files = max_files

    def read(self, name: str) -> bytes | None:
        try:
            return (self.folder / name).read_bytes()
        except OSError:
            return None

    def write(self, name: str, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.folder / name, data)
        self._prune()

    def _prune(self) -> None:
        entries = list(os.scandir(self.folder))
        if len(entries) <= self.max_files:
            return
        entries.sort(key=lambda e: e.stat().st_mtime)
        for entry in entries[:len(entries) - self.max_files + self.max_files // 10]:
            Path(entry.path).unlink(missing_ok=True)


def _hit_image(model: ServedModel, settings: Settings, product_id: str, preview_cache: str) -> Image.Image:
    """The product's cached picture, held to the shape policy before it is decoded (a strip cached by a
    build before the policy would be scaled up to hundreds of megabytes)."""
    cache_dir = model.spec.paths(settings).image_cache.resolve()
    path = (cache_dir / preview_cache).resolve() if preview_cache else None
    if path is None or not path.is_relative_to(cache_dir) or not path.is_file():
        raise ImageNotAvailableError(model.name, product_id)
    with Image.open(path) as img:
        try:
            check_shape(img, settings.image_policy, copy=True)
        except ImageDecodeError as exc:
            raise ImageNotAvailableError(model.name, product_id, str(exc)) from None
        return img.convert("RGB")


class Explainer:
    """Explains one (query, product) pair of a served model, through the disk cache."""

    def __init__(self, model: ServedModel, embedder: Embedder, settings: Settings) -> None:
        self.model, self.embedder, self.settings = model, embedder, settings
        self.cache = ExplainCache(model.spec.paths(settings).models / "explain_cache", settings.explain_cache_max_files)

    async def grids(self, query: bytes, product_id: str) -> tuple[str, Explanation]:
        preview = self.model.product(product_id).preview_cache or ""
        key = cache_key(self.model, query, product_id, preview)
        cached = self.cache.read(f"{key}.json")
        if cached is not None:
            return key, Explanation.from_json(json.loads(cached))
        found = await self._compute(query, product_id, preview)
        await to_thread.run_sync(self.cache.write, f"{key}.json", json.dumps(found.to_json()).encode())
        return key, found

    async def _compute(self, query: bytes, product_id: str, preview: str) -> Explanation:
        settings = self.settings
        size = max(self.embedder.encoder.input_size, PANEL)
        image = await to_thread.run_sync(lambda: decode_query(query, policy=settings.image_policy, shorter_side=size))
        hit = await to_thread.run_sync(_hit_image, self.model, settings, product_id, preview)
        future = self.embedder.batcher.call(explain_images, self.embedder.encoder, image, hit)
        found: Explanation = await asyncio.wrap_future(future)
        return found

    async def png(self, query: bytes, product_id: str, view: str) -> bytes:
        key, found = await self.grids(query, product_id)
        name = f"{key}-{view}.png"
        cached = self.cache.read(name)
        if cached is not None:
            return cached
        preview = self.model.product(product_id).preview_cache or ""
        data = await to_thread.run_sync(self._render, query, product_id, preview, found, view)
        await to_thread.run_sync(self.cache.write, name, data)
        return data

    def _render(self, query: bytes, product_id: str, preview: str, found: Explanation, view: str) -> bytes:
        panels = []
        if view in ("both", "query"):
            image = decode_query(query, policy=self.settings.image_policy, shorter_side=PANEL)
            panels.append(overlay(image, found.query))
        if view in ("both", "hit"):
            panels.append(overlay(_hit_image(self.model, self.settings, product_id, preview), found.hit))
        return panels_png(panels)
