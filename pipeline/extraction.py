"""Phase 3: CLIP features for every cached view, averaged per product and written into the store.

Decoding runs at most ``_AHEAD`` batches ahead of the model, so memory does not grow with the
catalogue; each embedded batch is committed to the build state, so a crash only redoes the batch
in flight. Products are then upserted into the catalogue store by id, in chunks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from core.encoder import l2_normalize
from core.head import ProjectionHead
from core.store import Product, ProductVector, Source
from core.types import Executor, PhaseName
from pipeline.base import NothingUsableError, PhaseResult, PipelineContext, digest
from pipeline.state import BuildState, StagedProduct
from utils.images import ImageDecodeError, check_shape

if TYPE_CHECKING:
    from core.encoder import ClipEncoder

logger = logging.getLogger(__name__)

_AHEAD = 2  # batches decoded ahead of the model


def backbone_identity(backbone: str) -> dict[str, Any]:
    """The backbone name plus, for a local folder, its weight files' sizes and times (new weights = redo)."""
    folder = Path(backbone).expanduser()
    if not folder.is_dir():
        return {"backbone": backbone}
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    return {"backbone": str(folder.resolve()),
            "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}}


def model_key(ctx: PipelineContext) -> str:
    return digest({**backbone_identity(ctx.backbone), "precision": ctx.settings.precision.value})[:16]


def bounded_map(fn: Any, items: Iterator[Any], ahead: int) -> Iterator[Any]:
    """``map(fn, items)`` on one worker thread, never more than ``ahead`` results ahead of the consumer."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        pending: deque[Future[Any]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class ExtractionPhase:
    name = PhaseName.EXTRACTION

    def fingerprint(self, ctx: PipelineContext) -> dict[str, Any]:
        state = ctx.state()
        return {"staged": state.get_meta("staged"), "downloaded": state.get_meta("downloaded"),
                "model": model_key(ctx), "head": head_sha(ctx), "drop_api_edits": ctx.drop_api_edits,
                "store": ctx.store().generation() if ctx.drop_api_edits else None}

    def outputs(self, ctx: PipelineContext) -> list[Path]:
        return []

    def run(self, ctx: PipelineContext) -> PhaseResult:
        state, key = ctx.state(), model_key(ctx)
        failed: Counter[str] = Counter()
        upserter = _Upserter(ctx, key)
        bar = tqdm(desc=f"{ctx.model}: embedding", unit="img", disable=not ctx.progress)
        if ctx.settings.executor == Executor.RAY:
            from pipeline import ray_executor

            embedded = ray_executor.embed(ctx, state, key, failed, bar, upserter.result.details)
        else:
            embedded = self._embed(ctx, state, key, failed, bar)
        bar.close()
        upserter.result.failed.update(failed)
        upserter.result.details["embedded"] = embedded
        return upserter.run(state)

    def _embed(self, ctx: PipelineContext, state: BuildState, key: str, failed: Counter[str], bar: tqdm) -> int:
        encoder: ClipEncoder | None = None
        done = 0
        batches = state.views_todo(key, ctx.settings.batch_size)
        for caches, pixels in bounded_map(lambda b: _pixels(ctx, b, failed), batches, _AHEAD):
            if caches:
                encoder = encoder or ctx.encoder()
                state.save_views(key, caches, encoder.encode_pixels(np.stack(pixels)))
                done += len(caches)
            bar.update(len(caches))
        return done


def _pixels(ctx: PipelineContext, batch: list[str], failed: Counter[str]) -> tuple[list[str], list[np.ndarray]]:
    from PIL import Image

    encoder = ctx.encoder()
    policy = ctx.settings.image_policy
    caches, pixels = [], []
    for rel in batch:
        try:
            with Image.open(ctx.paths.image_cache / rel) as img:
                check_shape(img, policy, copy=True)  # a copy cached before the policy is never scaled up
                pixels.append(encoder.pixels(img.convert("RGB")))
            caches.append(rel)
        except ImageDecodeError as exc:
            logger.warning("%s: cached image %s left out: %s", ctx.model, rel, exc)
            failed[exc.reason] += 1
        except Exception as exc:  # a damaged cache file is reported and left out; the rest goes on
            logger.warning("%s: cached image %s unreadable: %s", ctx.model, rel, exc)
            failed["unreadable cached image"] += 1
    return caches, pixels


def head_sha(ctx: PipelineContext) -> str | None:
    """The head the store's vectors are projected through (the store follows head.safetensors)."""
    head = ctx.store().head
    return head.sha256 if head else None


class _Upserter:
    """Averages each staged product's views and upserts the products into the store, in chunks."""

    def __init__(self, ctx: PipelineContext, key: str) -> None:
        self.ctx, self.key = ctx, key
        self.head: ProjectionHead | None = ctx.store().head
        self.result = PhaseResult()
        self.written = 0

    def run(self, state: BuildState) -> PhaseResult:
        store = self.ctx.store()
        api_before = store.stats().by_source.get(Source.API.value, 0)
        for chunk in state.staged():
            refs = list(dict.fromkeys(r for p in chunk for r in [*p.images, p.preview_image] if r))
            found = state.view_vectors(refs, self.key)
            items = [it for it in (self._item(p, found) for p in chunk) if it is not None]
            if items:
                self.written += store.upsert(self._project(items), keep_api=not self.ctx.drop_api_edits)
                state.mark_usable([it.product.id for it in items])
        sources = [Source.CSV, Source.API] if self.ctx.drop_api_edits else [Source.CSV]
        removed = store.delete_missing(state.usable_ids(), sources=sources)
        stats = store.stats()
        if not stats.products:
            raise NothingUsableError(self.ctx.model, "no product has a usable image; nothing to index", self.result)
        api_after = stats.by_source.get(Source.API.value, 0)
        self.result.ok = self.written
        self.result.details.update({"products": stats.products, "removed": removed, "api_kept": api_after,
                                    "api_dropped": max(0, api_before - api_after)})
        return self.result


    def _item(self, p: StagedProduct, found: dict[str, tuple[str, np.ndarray]]) -> ProductVector | None:
        views = [found[r] for r in p.images if r in found]
        if not views:
            self.result.failed["no usable image"] += 1
            self.result.example("no usable image", f"row {p.row}: {p.id}")
            logger.warning("%s: product %s (row %s) has no usable image; left out", self.ctx.model, p.id, p.row)
            return None
        clip = l2_normalize(np.mean([v for _, v in views], axis=0))
        preview = found.get(p.preview_image, views[0])[0]
        product = Product(id=p.id, title=p.title, category=p.category, images=tuple(p.images),
                          preview_image=p.preview_image, preview_cache=preview, extra=p.extra, source=Source.CSV)
        sig = hashlib.sha256(json.dumps([p.id, p.title, p.category, p.images, p.preview_image, p.extra, preview,
                                         self.key, self.head.sha256 if self.head else None,
                                         [c for c, _ in views]], sort_keys=True, default=str).encode()).hexdigest()
        return ProductVector(product, clip=clip.astype(np.float32), digest=sig)

    def _project(self, items: list[ProductVector]) -> list[ProductVector]:
        if self.head is None:
            return items
        projected = self.head.apply(np.stack([it.clip for it in items]))
        return [ProductVector(it.product, clip=it.clip, vector=v, digest=it.digest)
                for it, v in zip(items, projected, strict=True)]
