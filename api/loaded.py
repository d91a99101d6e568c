"""One model as the API serves it: an immutable snapshot of index, metadata, head and vectors.

Snapshots are never mutated; a reload or an admin edit builds a new one and swaps the
reference, so a search that already holds the old snapshot finishes on it undisturbed.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.config import Settings
from core.errors import ImageSearchError, IndexNotReadyError, ProductNotFoundError
from core.head import ProjectionHead, load_head
from core.model_config import ModelPaths, ModelSpec
from core.vector_index import IndexBundle, load_index_bundle

logger = logging.getLogger(__name__)

Signature = tuple[tuple[int, int, int] | None, tuple[int, int, int] | None]


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def file_signature(paths: ModelPaths) -> Signature:
    """Identity of the manifest and head files: os.replace gives a new inode, so a rewrite shows."""
    return (_stat(paths.manifest), _stat(paths.head))


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    backbone: str
    bundle: IndexBundle | None = None
    head: ProjectionHead | None = None
    embeddings: np.ndarray | None = None  # row-aligned with bundle.metadata (memory-mapped)
    positions: Mapping[str, int] = field(default_factory=dict)
    category_counts: Mapping[str, int] = field(default_factory=dict)
    error: str | None = None
    signature: Signature = (None, None)
    loaded_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def searchable(self) -> bool:
        return self.bundle is not None

    @property
    def num_products(self) -> int:
        return len(self.bundle.metadata) if self.bundle else 0

    @property
    def manifest(self) -> dict[str, Any]:
        return self.bundle.manifest if self.bundle else {}

    def require(self) -> LoadedModel:
        """Self when searchable, else IndexNotReadyError with the reason."""
        if self.bundle is None:
            raise IndexNotReadyError(self.name, self.error or "not loaded")
        return self

    def require_bundle(self) -> IndexBundle:
        """The loaded index bundle, else IndexNotReadyError with the reason (the typed form of ``require``)."""
        if self.bundle is None:
            raise IndexNotReadyError(self.name, self.error or "not loaded")
        return self.bundle

    def position(self, product_id: str) -> int:
        pos = self.positions.get(product_id)
        if pos is None:
            raise ProductNotFoundError(self.name, product_id)
        return pos

    def vectors(self) -> np.ndarray:
        """Every indexed vector, (n, dim) float32, row-aligned with metadata."""
        bundle = self.require_bundle()
        if self.embeddings is not None:
            return np.asarray(self.embeddings, dtype=np.float32)
        return _reconstruct_all(bundle)

    def vector(self, pos: int) -> np.ndarray:
        if self.embeddings is not None:
            return np.asarray(self.embeddings[pos], dtype=np.float32)
        return np.asarray(self.require_bundle().index.reconstruct(int(pos)))


def _reconstruct_all(bundle: IndexBundle) -> np.ndarray:
    import faiss

    index = bundle.index
    if isinstance(index, faiss.IndexIVF):
        index.make_direct_map()
    vectors: np.ndarray = index.reconstruct_n(0, index.ntotal)
    return vectors


def _load_embeddings(paths: ModelPaths, bundle: IndexBundle) -> np.ndarray | None:
    if not paths.embeddings.is_file():
        return None
    try:
        emb: np.ndarray = np.load(paths.embeddings, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        logger.warning("%s: unreadable (%s); vectors come from the index", paths.embeddings, exc)
        return None
    if emb.shape != (bundle.index.ntotal, bundle.index.d):
        logger.warning("%s: shape %s does not match the index; vectors come from the index",
                       paths.embeddings, emb.shape)
        return None
    return emb


def _checked_head(paths: ModelPaths, bundle: IndexBundle, name: str) -> ProjectionHead | None:
    """The head the index was built with (manifest ``head`` sha), or None when it used none."""
    wanted = bundle.manifest.get("head")
    if not wanted:
        return None
    head = load_head(paths.head)
    if head is None or head.sha256 != wanted:
        raise IndexNotReadyError(name, "head.safetensors does not match the head the index was built with "
                                       f"(rebuild: python run_training.py {name})")
    if head.output_dim != bundle.index.d:
        raise IndexNotReadyError(name, f"head outputs {head.output_dim} dims, index holds {bundle.index.d}")
    return head


def _check_backbone(bundle: IndexBundle, name: str, backbone: str, encoder_dim: int | None,
                    head: ProjectionHead | None) -> None:
    built = bundle.manifest.get("backbone")
    if built and str(built) != backbone:
        raise IndexNotReadyError(name, f"index built with backbone {built!r} but the model is configured "
                                       f"for {backbone!r} (rebuild: python run_training.py {name})")
    wanted = head.input_dim if head else bundle.index.d
    if encoder_dim is not None and encoder_dim != wanted:
        raise IndexNotReadyError(name, f"backbone gives {encoder_dim}-dim vectors, index expects {wanted}")


def snapshot(spec: ModelSpec, backbone: str, bundle: IndexBundle, head: ProjectionHead | None,
             embeddings: np.ndarray | None, signature: Signature) -> LoadedModel:
    """A searchable snapshot with its lookup tables built."""
    positions = {str(row.get("id")): i for i, row in enumerate(bundle.metadata)}
    counts = Counter(str(row.get("category") or "") for row in bundle.metadata)
    counts.pop("", None)
    return LoadedModel(spec=spec, backbone=backbone, bundle=bundle, head=head, embeddings=embeddings,
                       positions=positions, category_counts=dict(sorted(counts.items())), signature=signature)


def load_model(settings: Settings, spec: ModelSpec, *, encoder_dim: int | None,
               encoder_error: str | None = None) -> LoadedModel:
    """Load one model from disk. Never raises: an unusable model is returned with ``error`` set."""
    paths = spec.paths(settings)
    backbone = spec.backbone_for(settings)
    signature = file_signature(paths)
    try:
        if encoder_error:
            raise IndexNotReadyError(spec.name, encoder_error)
        bundle = load_index_bundle(paths, spec.name)
        head = _checked_head(paths, bundle, spec.name)
        _check_backbone(bundle, spec.name, backbone, encoder_dim, head)
    except ImageSearchError as exc:
        reason = getattr(exc, "reason", None) or exc.message
        logger.warning("model %s is not searchable: %s", spec.name, reason)
        return LoadedModel(spec=spec, backbone=backbone, error=reason, signature=signature)
    loaded = snapshot(spec, backbone, bundle, head, _load_embeddings(paths, bundle), signature)
    logger.info("model %s: %d products, %s index, head %s", spec.name, loaded.num_products,
                bundle.manifest.get("index_type"), "yes" if head else "no")
    return loaded
