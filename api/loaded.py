"""One model as the API serves it: its spec, backbone, catalogue store and head.

The store is shared and safe for concurrent use: searches read it while edits write it (the
store's index is edited in place). A reload builds a new ``ServedModel`` with a freshly opened
store and swaps the reference; a search already holding the old one finishes on it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import Settings
from core.errors import ImageSearchError, IndexNotReadyError, ProductNotFoundError
from core.head import ProjectionHead
from core.store import ModelStore
from core.model_config import ModelSpec
from core.store import Product, StoreStats

logger = logging.getLogger(__name__)

Signature = tuple[int, int, int] | None
_STATS_TTL = 5.0  # seconds a /models snapshot of per-category counts is reused at least
_STATS_COST = 10  # ... and at least this many times as long as it took (a large Milvus collection scans slowly)


def file_signature(path: Path) -> Signature:
    """Identity of a file: os.replace gives a new inode, so a rewrite shows."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass
class _StatsCache:
    stats: StoreStats | None = None
    at: float = 0.0
    ttl: float = _STATS_TTL
    refreshing: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class ServedModel:
    spec: ModelSpec
    backbone: str
    store: ModelStore | None = None
    error: str | None = None
    head_signature: Signature = None
    index_signature: Signature = None
    built: bool = True  # False: no catalogue was ever built (not a fault: nothing to serve yet)
    loaded_at: float = field(default_factory=time.time)
    _stats: _StatsCache = field(default_factory=_StatsCache, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def head(self) -> ProjectionHead | None:
        return self.store.head if self.store is not None else None

    @property
    def problem(self) -> str | None:
        """Why the model cannot serve: its load failed, or its store was found damaged since."""
        return self.error or (self.store.damaged if self.store is not None else None)

    @property
    def searchable(self) -> bool:
        return self.problem is None and self.store is not None and self.store.live_index is not None

    @property
    def state(self) -> str:
        """``ready``, ``not built`` (never built: not a fault) or ``failed`` (built, but cannot serve now)."""
        if self.searchable:
            return "ready"
        return "not built" if not self.built else "failed"

    @property
    def query_dim(self) -> int | None:
        """Length of the raw CLIP vectors this model takes as queries (its head's input, else the index's); read
        from memory, so it answers while a remote store cannot."""
        if self.head is not None:
            return self.head.input_dim
        live = self.store.live_index if self.store is not None else None
        return live.info.dim if live is not None else None

    @property
    def num_products(self) -> int:
        live = self.store.live_index if self.store is not None else None
        return live.info.count if live is not None else 0

    @property
    def index_info(self) -> dict[str, Any]:
        live = self.store.live_index if self.store is not None else None
        return live.info.to_json() if live is not None else {}

    def require(self) -> ModelStore:
        """The store when searchable, else IndexNotReadyError with the reason."""
        if not self.searchable or self.store is None:
            raise IndexNotReadyError(self.name, self.problem or "not loaded")
        return self.store

    def product(self, product_id: str) -> Product:
        found = self.require().get([product_id])
        if not found:
            raise ProductNotFoundError(self.name, product_id)
        return found[0]

    def stats(self) -> StoreStats | None:
        """Per-category counts and columns. They scan the store, so a snapshot is reused for a while and,
        once stale, still served while a background thread takes the next one; only the first call waits
        (blocking: call it off the event loop)."""
        if self.store is None:
            return None
        cache = self._stats
        with cache.lock:
            if cache.stats is not None:
                if not cache.refreshing and time.monotonic() - cache.at > cache.ttl:
                    cache.refreshing = True
                    threading.Thread(target=self._take_stats, name=f"stats-{self.name}", daemon=True).start()
                return cache.stats
        return self._take_stats()

    def _take_stats(self) -> StoreStats | None:
        cache, start = self._stats, time.monotonic()
        try:
            assert self.store is not None
            stats = self.store.stats()
        except ImageSearchError as exc:
            logger.warning("model %s: counts for /models not taken: %s", self.name, exc.message)
            with cache.lock:
                cache.refreshing = False
                if cache.stats is None:
                    raise
                return cache.stats
        took = time.monotonic() - start
        with cache.lock:
            cache.stats, cache.at, cache.ttl = stats, time.monotonic(), max(_STATS_TTL, _STATS_COST * took)
            cache.refreshing = False
        return stats


def load_model(settings: Settings, spec: ModelSpec, *, encoder_dim: int | None,
               encoder_error: str | None = None) -> ServedModel:
    """Open one model's store and index. Never raises: an unusable model comes back with ``error``."""
    from core.catalogue_store import open_store, store_exists

    paths = spec.paths(settings)
    backbone = spec.backbone_for(settings)
    signature = file_signature(paths.head)
    index_signature = file_signature(paths.models / "index.json")
    store = None
    try:
        if not store_exists(settings, spec):  # nothing to serve yet: not a fault, whatever the backbone
            logger.info("model %s is not built yet", spec.name)
            return ServedModel(spec=spec, backbone=backbone, built=False, head_signature=signature,
                               index_signature=index_signature,
                               error=f"no catalogue built yet (run: python run_training.py {spec.name})")
        if encoder_error:
            raise IndexNotReadyError(spec.name, encoder_error)
        store = open_store(settings, spec)
        if store.live_index is None:
            raise IndexNotReadyError(spec.name, f"the catalogue is empty (run: python run_training.py {spec.name})")
        _check_dims(store, spec.name, encoder_dim)
    except ImageSearchError as exc:
        reason = getattr(exc, "reason", None) or exc.message
        logger.warning("model %s is not searchable: %s", spec.name, reason)
        return ServedModel(spec=spec, backbone=backbone, store=store, error=reason, head_signature=signature,
                           index_signature=index_signature)
    live = store.live_index
    assert live is not None
    logger.info("model %s: %d products, %s index, head %s", spec.name, live.info.count, live.kind,
                "yes" if store.head else "no")
    return ServedModel(spec=spec, backbone=backbone, store=store, head_signature=signature,
                       index_signature=index_signature)


def _check_dims(store: ModelStore, name: str, encoder_dim: int | None) -> None:
    live = store.live_index
    assert live is not None
    head = store.head
    wanted = head.input_dim if head else live.info.dim
    if encoder_dim is not None and encoder_dim != wanted:
        raise IndexNotReadyError(name, f"backbone gives {encoder_dim}-dim vectors, the catalogue expects {wanted} "
                                       f"(rebuild: python run_training.py {name} --force)")
