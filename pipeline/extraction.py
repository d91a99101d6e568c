"""Phase 3: CLIP features for every cached view, averaged per product and written into the store.

The phase hands the views without a vector to the run's executor (pipeline/executor.py), which embeds them
here or on Ray, and writes what comes back: each embedded batch is committed to the build state, so a crash
only redoes the batch in flight, and the products are upserted into the catalogue store by id, in chunks,
as soon as all their views are embedded.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from core.head import ProjectionHead
from core.store import Product, ProductViews, Source, product_vectors
from core.types import PhaseName
from pipeline import progress
from pipeline.base import NothingUsableError, PhaseResult, PipelineContext, digest
from pipeline.executor import Embedded, PhaseExecutor
from pipeline.preprocess import Item
from pipeline.state import BuildState, StagedProduct

if TYPE_CHECKING:
    from core.encoder import ClipEncoder

logger = logging.getLogger(__name__)

_PRODUCTS = 512  # staged products upserted together (while the next ones embed)
_WAITING = 4  # product chunks held back for their views at most (bounded memory on a mostly embedded rerun)


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
        upserter = _Upserter(ctx, key)
        bar = progress.bar(ctx, f"{ctx.model}: embedding", total=state.count_views_todo(key))
        views = _Views(ctx, key, bar, upserter.result.details)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="upsert") as writer:
            if next(state.views_todo(key, 1), None) is None:  # nothing to embed: no encoder, no executor
                upserter.write_all(state.staged(_PRODUCTS))
            else:
                views.run(ctx.executor(), upserter, writer)
        bar.close()
        upserter.result.failed.update(views.failed)
        upserter.result.details["embedded"] = views.embedded
        return upserter.finish(state)


class _Views:
    """The extraction phase's work, as an executor sees it (pipeline/executor.py ``Views``): the views without a
    vector, in product order or all at once, and what becomes of each embedded batch: its vectors committed to
    the build state (a kill redoes only the batch in flight), and each chunk of products whose views are all
    embedded upserted on a writer thread while the next batches embed."""

    def __init__(self, ctx: PipelineContext, key: str, bar: tqdm, details: dict[str, Any]) -> None:
        self.ctx, self.state, self.key, self.bar, self.details = ctx, ctx.state(), key, bar, details
        self.image_cache, self.backbone = ctx.paths.image_cache, ctx.backbone
        self.failed: Counter[str] = Counter()
        self.queued: set[str] = set()  # views handed to the executor and not yet committed (or failed)
        self.embedded = 0

    def run(self, executor: PhaseExecutor, upserter: _Upserter, writer: ThreadPoolExecutor) -> None:
        pending: Future[None] | None = None
        with closing(executor.embed(self)) as batches:  # a failed write stops the executor's work at once
            for done, products in batches:
                self._commit(done)
                if products:  # every view of these products is committed: upsert them beside the next batches
                    if pending is not None:
                        pending.result()  # one chunk at a time (and its errors raised here)
                    pending = writer.submit(upserter.write_all, products)
        if pending is not None:
            pending.result()

    def encoder(self) -> ClipEncoder:
        with progress.loading_model(self.bar):  # seconds with nothing to count: the bar says why
            return self.ctx.encoder()

    def unordered(self) -> tuple[list[str], Iterable[list[StagedProduct]]]:
        return [rel for chunk in self.state.views_todo(self.key, 10_000) for rel in chunk], self.state.staged(_PRODUCTS)

    def in_order(self, size: int) -> Iterator[tuple[list[Item], list[list[StagedProduct]]]]:
        """Batches of ``size`` views in product order, each with the product chunks whose last missing view it
        holds (so they can be upserted once it is committed)."""
        todo: list[str] = []
        waiting: list[tuple[int, list[StagedProduct]]] = []  # (position of its last view, chunk)
        emitted = 0
        for chunk in self.state.staged(_PRODUCTS):
            missing = [c for c in self.state.views_missing(_refs(chunk), self.key) if c not in self.queued]
            self.queued.update(missing)
            todo += missing
            waiting.append((emitted + len(todo), chunk))
            while len(todo) >= size or (waiting and (not todo or len(waiting) > _WAITING)):
                head = todo[:size]  # a full batch; a short one only to keep few chunks waiting
                emitted += len(head)
                yield self._items(head), [c for last, c in waiting if last <= emitted]
                todo, waiting = todo[len(head):], [(last, c) for last, c in waiting if last > emitted]
        if todo or waiting:
            yield self._items(todo), [c for _, c in waiting]

    def _items(self, caches: list[str]) -> list[Item]:
        return [(rel, self.image_cache / rel) for rel in caches]

    def _commit(self, done: Embedded) -> None:
        for rel, reason, why in done.failed:
            logger.warning("%s: cached image %s left out: %s", self.ctx.model, rel, why)
            self.failed[reason] += 1
        if done.keys:
            self.state.save_views(self.key, done.keys, done.vectors)
            self.embedded += len(done.keys)
        self.queued.difference_update([*done.keys, *(rel for rel, _, _ in done.failed)])
        self.bar.update(len(done.keys) + len(done.failed))


def _refs(chunk: list[StagedProduct]) -> list[str]:
    """A chunk's distinct image references (views and previews)."""
    return list(dict.fromkeys(r for p in chunk for r in [*p.images, p.preview_image] if r))


def head_sha(ctx: PipelineContext) -> str | None:
    """The head the store's vectors are projected through (the store follows head.safetensors)."""
    head = ctx.store().head
    return head.sha256 if head else None


class _Upserter:
    """Averages each staged product's views and upserts the products into the store, in chunks."""

    def __init__(self, ctx: PipelineContext, key: str) -> None:
        self.ctx, self.key = ctx, key
        self.store, self.state = ctx.store(), ctx.state()
        self.head: ProjectionHead | None = self.store.head
        self.api_before = self.store.stats().by_source.get(Source.API.value, 0)
        self.result = PhaseResult()
        self.written = self.deletes_kept = 0

    def write_all(self, chunks: Iterable[list[StagedProduct]]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def write(self, chunk: list[StagedProduct]) -> None:
        """Upsert one chunk of staged products (those with at least one embedded view)."""
        found = self.state.view_vectors(_refs(chunk), self.key)
        items = [it for it in (self._item(p, found) for p in chunk) if it is not None]
        if items:
            keep_api = not self.ctx.drop_api_edits
            self.written += self.store.upsert(product_vectors(items, self.head, build_key=self.key), keep_api=keep_api)
            ids = [it.product.id for it in items]
            self.state.mark_usable(ids)
            # CSV products an API delete keeps out (their rows unchanged since): counted for the summary
            self.deletes_kept += len(self.store.deleted_ids(ids)) if keep_api else 0

    def finish(self, state: BuildState) -> PhaseResult:
        """Drop what is no longer staged and report."""
        sources = [Source.CSV, Source.API] if self.ctx.drop_api_edits else [Source.CSV]
        removed = self.store.delete_missing(state.usable_ids(), sources=sources)
        stats = self.store.stats()
        if not stats.products:
            raise NothingUsableError(self.ctx.model, "no product has a usable image; nothing to index", self.result)
        api_after = stats.by_source.get(Source.API.value, 0)
        self.result.ok = self.written
        self.result.details.update({"products": stats.products, "removed": removed, "api_kept": api_after,
                                    "api_dropped": max(0, self.api_before - api_after),
                                    "api_deletes_kept": self.deletes_kept})
        return self.result

    def _item(self, p: StagedProduct, found: dict[str, tuple[str, np.ndarray]]) -> ProductViews | None:
        views = [found[r] for r in p.images if r in found]
        if not views:
            self.result.failed["no usable image"] += 1
            self.result.example("no usable image", f"row {p.row}: {p.id}")
            logger.warning("%s: product %s (row %s) has no usable image; left out", self.ctx.model, p.id, p.row)
            return None
        preview = found.get(p.preview_image, views[0])[0]
        product = Product(id=p.id, title=p.title, category=p.category, images=tuple(p.images),
                          preview_image=p.preview_image, preview_cache=preview, extra=p.extra, source=Source.CSV,
                          view_caches=tuple(found[r][0] if r in found else "" for r in p.images))
        return ProductViews(product, [v for _, v in views], caches=[c for c, _ in views])
