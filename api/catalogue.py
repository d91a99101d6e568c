"""Every model the API serves, loaded once at start, swapped atomically on reload.

The model table is a dict replaced wholesale under a lock (copy-on-write), so readers never
lock and never see a half-updated table. A watcher thread polls each model's manifest.json
(and head) identity and reloads a model when the pipeline has written a new index.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict

from core.config import Settings
from core.errors import BackboneLoadError, ImageSearchError, IndexNotReadyError, UnknownModelError
from core.model_config import ModelRegistry, ModelSpec, validate_model_name

from api.embedder import Embedder
from api.loaded import LoadedModel, file_signature, load_model

logger = logging.getLogger(__name__)


def configure_threads(settings: Settings) -> None:
    """torch gets the cores for the one forward pass at a time; FAISS searches single-threaded,
    since one query gains nothing from OpenMP and concurrent ones would oversubscribe."""
    import os

    import faiss
    import torch

    torch.set_num_threads(settings.torch_threads or os.cpu_count() or 1)
    faiss.omp_set_num_threads(1)


class Catalogue:
    """Loaded models by name, shared embedders by backbone, and the hot-reload watcher."""

    def __init__(self, settings: Settings, registry: ModelRegistry | None = None, *,
                 watch_interval: float = 1.0) -> None:
        self.settings = settings
        self._registry = registry
        self._models: dict[str, LoadedModel] = {}
        self._embedders: dict[str, Embedder] = {}
        self._embedder_errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._admin_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._watch_interval = watch_interval
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # lifecycle
    def start(self) -> None:
        configure_threads(self.settings)
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

    # reading (lock-free: the dict is replaced, never mutated)
    def names(self) -> list[str]:
        return sorted(self._models)

    def models(self) -> list[LoadedModel]:
        table = self._models
        return [table[n] for n in sorted(table)]

    def model(self, name: str) -> LoadedModel:
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

    def admin_lock(self, name: str) -> threading.Lock:
        return self._admin_locks[name]

    # writing
    def install(self, loaded: LoadedModel) -> None:
        """Swap in a new snapshot of one model (admin edits build their own)."""
        self._install(loaded)

    def reload(self, name: str) -> LoadedModel:
        """Reload one model from disk. A failed reload keeps the old snapshot serving and raises."""
        current = self.model(name)
        fresh = self._load(current.spec)
        if fresh.searchable or not current.searchable:
            self._install(fresh)
        if not fresh.searchable:
            kept = "still serving the previous index; " if current.searchable else ""
            raise IndexNotReadyError(name, f"reload failed, {kept}{fresh.error}")
        return fresh

    def _install(self, loaded: LoadedModel) -> None:
        with self._lock:
            table = dict(self._models)
            table[loaded.name] = loaded
            self._models = table

    def _load(self, spec: ModelSpec) -> LoadedModel:
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
        from core.encoder import ClipEncoder

        try:
            emb = Embedder(ClipEncoder.from_settings(self.settings, backbone))
        except BackboneLoadError as exc:
            self._embedder_errors[backbone] = exc.message
            raise
        emb.start()
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
            if file_signature(current.spec.paths(self.settings)) == current.signature:
                continue
            with self.admin_lock(current.name):
                if file_signature(current.spec.paths(self.settings)) == self.model(current.name).signature:
                    continue  # an admin edit installed these very files
                logger.info("model %s changed on disk: reloading", current.name)
                try:
                    self.reload(current.name)
                except ImageSearchError as exc:
                    logger.warning("%s", exc.message)
                    self._remember_signature(current.name)

    def _remember_signature(self, name: str) -> None:
        """After a failed reload, stop retrying until the files change again."""
        from dataclasses import replace

        current = self.model(name)
        self._install(replace(current, signature=file_signature(current.spec.paths(self.settings))))

    def _discover_new(self) -> list[ModelSpec]:
        if self._registry is not None:
            return []
        try:
            registry = ModelRegistry.discover(self.settings)
        except ImageSearchError as exc:
            logger.warning("model discovery failed: %s", exc.message)
            return []
        return [spec for spec in registry if spec.name not in self._models]
