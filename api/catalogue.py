"""Every model the API serves, loaded once at start, swapped atomically on reload.

The model table is a dict replaced wholesale under a lock (copy-on-write), so readers never
lock and never see a half-updated table. A watcher thread, about once a second, lets each model's
store catch up with writes made by other processes (the pipeline, another API), and reloads a
model whose head changed or whose index was rebuilt as another type. A model in Milvus that could
not be served (Milvus unreachable, or not built yet, perhaps from another machine) is tried again
every few seconds.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

from core.config import Settings
from core.errors import BackboneLoadError, ImageSearchError, IndexNotReadyError, UnknownModelError
from core.model_config import ModelRegistry, ModelSpec, validate_model_name
from core.store import ModelStore
from core.types import StoreKind

from api.embedder import Embedder
from api.loaded import ServedModel, file_signature, load_model

logger = logging.getLogger(__name__)

_RETRY_WATCHES = 5  # watcher ticks between attempts to serve a Milvus model that is not servable


class Catalogue:
    """Loaded models by name, shared embedders by backbone, and the hot-reload watcher."""

    def __init__(self, settings: Settings, registry: ModelRegistry | None = None, *,
                 watch_interval: float = 1.0) -> None:
        self.settings = settings
        self._registry = registry
        self._models: dict[str, ServedModel] = {}
        self._embedders: dict[str, Embedder] = {}
        self._embedder_errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._admin_locks: dict[str, threading.RLock] = defaultdict(threading.RLock)
        self._watch_interval = watch_interval
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # lifecycle
    def start(self) -> None:
        registry = self._registry or ModelRegistry.discover(self.settings)
        for spec in registry:
            self._install(self._load(spec))
        if self._watch_interval > 0:
            self._watcher = threading.Thread(target=self._watch, name="index-watcher", daemon=True)
            self._watcher.start()
        ready = [m.name for m in self.models() if m.searchable]
        logger.info("serving %d of %d models: %s", len(ready), len(self._models), ", ".join(ready) or "none")

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
        for emb in self._embedders.values():
            emb.stop()
        for model in self.models():
            if model.store is not None:
                model.store.close()
        if "core.milvus_client" in sys.modules:  # frees an embedded milvus-lite file for the next process
            from core.milvus_client import close_clients

            close_clients(embedded_only=True)

    # reading (lock-free: the dict is replaced, never mutated)
    def names(self) -> list[str]:
        return sorted(self._models)

    def models(self) -> list[ServedModel]:
        table = self._models
        return [table[n] for n in sorted(table)]

    def model(self, name: str) -> ServedModel:
        validate_model_name(name)
        found = self._models.get(name)
        if found is None:
            raise UnknownModelError(name, self.names())
        return found

    def embedder(self, backbone: str) -> Embedder:
        emb = self._embedders.get(backbone)
        if emb is None:
            raise BackboneLoadError(self._embedder_errors.get(backbone, f"backbone {backbone!r} is not loaded"))
        return emb

    def batch_stats(self) -> dict[str, tuple[int, int]]:
        """backbone -> (forward passes, queries embedded) by the micro-batcher."""
        return {b: (e.batcher.batches, e.batcher.items) for b, e in sorted(self._embedders.items())}

    def admin_lock(self, name: str) -> threading.RLock:
        """Serialises writers of one model (admin edits, reloads); readers never take it."""
        return self._admin_locks[name]

    # writing
    def install(self, loaded: ServedModel) -> None:
        """Swap in a new snapshot of one model (admin edits build their own)."""
        self._install(loaded)

    def reload(self, name: str) -> ServedModel:
        """Reload one model from disk. A failed reload keeps the old snapshot serving and raises."""
        with self.admin_lock(name):
            current = self.model(name)
            fresh = self._load(self._spec_now(current.spec))
            if fresh.searchable or not current.searchable:
                self._install(fresh)
        if not fresh.searchable:
            kept = "still serving the previous index; " if current.searchable else ""
            raise IndexNotReadyError(name, f"reload failed, {kept}{fresh.error}")
        return fresh

    def _spec_now(self, spec: ModelSpec) -> ModelSpec:
        """The model's spec as data/<m>/model.json says now (a restore may have replaced it)."""
        if self._registry is not None:
            return spec
        try:
            return ModelRegistry.discover(self.settings).get(spec.name)
        except ImageSearchError:
            return spec

    def _install(self, loaded: ServedModel) -> None:
        with self._lock:
            table = dict(self._models)
            table[loaded.name] = loaded
            self._models = table

    def _load(self, spec: ModelSpec) -> ServedModel:
        backbone = spec.backbone_for(self.settings)
        error = None
        try:
            emb = self._ensure_embedder(backbone)
        except ImageSearchError as exc:
            emb, error = None, exc.message
        return load_model(self.settings, spec, encoder_dim=emb.dim if emb else None, encoder_error=error)

    def _ensure_embedder(self, backbone: str) -> Embedder:
        with self._lock:
            if backbone in self._embedders:
                return self._embedders[backbone]
        try:
            emb = Embedder.load(self.settings, backbone)
        except BackboneLoadError as exc:
            self._embedder_errors[backbone] = exc.message
            raise
        with self._lock:
            self._embedders.setdefault(backbone, emb)
            winner = self._embedders[backbone]
        if winner is not emb:
            emb.stop()
        return winner

    # hot reload
    def _watch(self) -> None:
        while not self._stop.wait(self._watch_interval):
            try:
                self._watch_once()
            except Exception:  # the watcher must outlive any one bad tick
                logger.exception("index watcher tick failed")

    def _watch_once(self) -> None:
        for spec in self._discover_new():
            logger.info("new model %s discovered", spec.name)
            self._install(self._load(spec))
        for current in self.models():
            if self._stale(current):
                with self.admin_lock(current.name):
                    logger.info("model %s changed on disk: reloading", current.name)
                    try:
                        self.reload(current.name)
                    except ImageSearchError as exc:
                        logger.warning("%s", exc.message)
                        self._remember_signature(current.name)
            elif self._retry_due(current):
                self._retry(current)
            elif current.searchable and current.store is not None:
                try:
                    current.store.refresh()
                except ImageSearchError as exc:  # the store has logged the failure; the other models go on
                    logger.debug("model %s: refresh failed: %s", current.name, exc.message)

    def _retry_due(self, current: ServedModel) -> bool:
        """A Milvus model that is not servable: its catalogue lives elsewhere, so no file here says when
        it is back or built; try again every few ticks."""
        return (not current.searchable and current.spec.store_for(self.settings) == StoreKind.MILVUS
                and time.time() - current.loaded_at >= _RETRY_WATCHES * self._watch_interval)

    def _retry(self, current: ServedModel) -> None:
        with self.admin_lock(current.name):
            fresh = self._load(current.spec)
            self._install(fresh)  # a failure too: its load time sets when the next try is due
        if fresh.searchable:
            logger.info("model %s is servable again", current.name)

    def _stale(self, current: ServedModel) -> bool:
        """A reload is due: the head file changed, the model got built, its catalogue was restored from a
        backup, or its index changed type."""
        paths = current.spec.paths(self.settings)
        if file_signature(paths.head) != current.head_signature:
            return True
        if current.store is not None and _replaced(current.store):
            return True
        if not current.searchable:
            return file_signature(paths.models / "index.json") != current.index_signature
        live = current.store.live_index if current.store is not None else None
        saved = _saved_kind(paths.models / "index.json")
        return live is not None and saved is not None and saved != live.kind.value

    def _remember_signature(self, name: str) -> None:
        """After a failed reload, stop retrying until the files change again."""
        from dataclasses import replace

        current = self.model(name)
        paths = current.spec.paths(self.settings)
        self._install(replace(current, head_signature=file_signature(paths.head),
                              index_signature=file_signature(paths.models / "index.json")))

    def _discover_new(self) -> list[ModelSpec]:
        if self._registry is not None:
            return []
        try:
            registry = ModelRegistry.discover(self.settings)
        except ImageSearchError as exc:
            logger.warning("model discovery failed: %s", exc.message)
            return []
        return [spec for spec in registry if spec.name not in self._models]


def _replaced(store: ModelStore) -> bool:
    try:
        return store.replaced()
    except ImageSearchError:  # Milvus unreachable: the next tick asks again
        return False


def _saved_kind(path: Path) -> str | None:
    from utils.atomic import read_json

    try:
        return str(read_json(path)["kind"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
