"""FAISS index: choose a type by catalogue size, build, search (scores as cosine), save/load atomically."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, UTC
from typing import Any

import faiss
import numpy as np

from core.config import Settings
from core.errors import IndexNotReadyError
from core.model_config import ModelPaths
from core.types import Embeddings, IndexType, Metric
from utils.atomic import read_json, read_jsonl, sha256_file, write_atomic, write_json_atomic, write_jsonl_atomic

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
_MIN_POINTS_PER_LIST = 39  # FAISS wants this many training points per IVF centroid


def choose_index_type(num_vectors: int, settings: Settings) -> IndexType:
    """auto: exact flat search while it is fast enough, HNSW for large, IVF for huge catalogues."""
    if num_vectors <= settings.flat_max_products:
        return IndexType.FLAT
    if num_vectors <= settings.hnsw_max_products:
        return IndexType.HNSW
    return IndexType.IVF


def _faiss_metric(metric: Metric) -> int:
    return faiss.METRIC_INNER_PRODUCT if metric == Metric.COSINE else faiss.METRIC_L2


def ivf_nlist(num_vectors: int) -> int:
    return max(1, min(int(4 * math.sqrt(num_vectors)), num_vectors // _MIN_POINTS_PER_LIST))


def build_index(vectors: Embeddings, index_type: IndexType, metric: Metric, settings: Settings) -> faiss.Index:
    """Build an index over L2-normalised ``vectors``; ``auto`` picks a type from their number."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if index_type == IndexType.AUTO:
        index_type = choose_index_type(n, settings)
    fm = _faiss_metric(metric)
    index: faiss.Index
    if index_type == IndexType.FLAT:
        index = faiss.IndexFlatIP(dim) if metric == Metric.COSINE else faiss.IndexFlatL2(dim)
    elif index_type == IndexType.HNSW:
        hnsw = faiss.IndexHNSWFlat(dim, settings.hnsw_m, fm)
        hnsw.hnsw.efConstruction = max(40, 2 * settings.hnsw_m)
        hnsw.hnsw.efSearch = settings.hnsw_ef_search
        index = hnsw
    elif index_type == IndexType.IVF:
        nlist = ivf_nlist(n)
        quantizer = faiss.IndexFlatIP(dim) if metric == Metric.COSINE else faiss.IndexFlatL2(dim)
        ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, fm)
        ivf.train(vectors)
        ivf.nprobe = min(settings.ivf_nprobe, nlist)
        index = ivf
    else:  # pragma: no cover - enum is exhaustive
        raise ValueError(index_type)
    index.add(vectors)
    return index


def index_type_of(index: faiss.Index) -> IndexType:
    if isinstance(index, faiss.IndexHNSW):
        return IndexType.HNSW
    if isinstance(index, faiss.IndexIVF):
        return IndexType.IVF
    return IndexType.FLAT


def search_index(index: faiss.Index, metric: Metric, queries: Embeddings, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions), each (n_queries, k). Scores are cosine similarity for either metric;
    missing neighbours have position -1."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = max(1, min(int(k), index.ntotal)) if index.ntotal else 1
    dist, pos = index.search(queries, k)
    scores = dist if metric == Metric.COSINE else 1.0 - dist / 2.0  # |a-b|^2 = 2 - 2cos for unit vectors
    return np.clip(scores, -1.0, 1.0).astype(np.float32), pos


def write_index_bundle(paths: ModelPaths, index: faiss.Index, metadata: list[dict[str, Any]],
                       manifest: dict[str, Any]) -> dict[str, Any]:
    """Write index.faiss and metadata.jsonl, then manifest.json last (with checksums of both).

    Each file is replaced atomically; a reader that sees the new manifest can check the files
    against it, so a half-written bundle is never taken for a complete one.
    """
    if index.ntotal != len(metadata):
        raise ValueError(f"index holds {index.ntotal} vectors but metadata has {len(metadata)} rows")
    blob = faiss.serialize_index(index)
    write_atomic(paths.index, lambda fh: fh.write(blob.tobytes()))
    write_jsonl_atomic(paths.metadata, metadata)
    manifest = {
        **manifest,
        "version": MANIFEST_VERSION,
        "num_products": int(index.ntotal),
        "dim": int(index.d),
        "index_type": index_type_of(index).value,
        "built_at": manifest.get("built_at") or datetime.now(UTC).isoformat(timespec="seconds"),
        "files": {p.name: sha256_file(p) for p in (paths.index, paths.metadata)},
    }
    write_json_atomic(paths.manifest, manifest)
    return manifest


@dataclass
class IndexBundle:
    """A loaded, consistent index: FAISS index, one metadata row per vector, and the manifest."""

    index: faiss.Index
    metadata: list[dict[str, Any]]
    manifest: dict[str, Any]

    @property
    def metric(self) -> Metric:
        return Metric(self.manifest.get("metric", Metric.COSINE))

    def search(self, queries: Embeddings, k: int) -> tuple[np.ndarray, np.ndarray]:
        return search_index(self.index, self.metric, queries, k)


def load_index_bundle(paths: ModelPaths, model: str, *, retries: int = 3) -> IndexBundle:
    """Load and cross-check the bundle; raise IndexNotReadyError with a reason if it is unusable.

    A checksum mismatch may mean a writer is mid-swap, so it is retried briefly before failing.
    """
    for attempt in range(retries + 1):
        try:
            return _load_once(paths, model)
        except _Inconsistent as exc:
            if attempt == retries:
                raise IndexNotReadyError(model, str(exc)) from None
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


class _Inconsistent(Exception):
    pass


def _load_once(paths: ModelPaths, model: str) -> IndexBundle:
    if not paths.manifest.is_file():
        raise IndexNotReadyError(model, "no index built yet (run: python run_training.py " + model + ")")
    try:
        manifest = read_json(paths.manifest)
    except (OSError, ValueError) as exc:
        raise IndexNotReadyError(model, f"manifest.json unreadable: {exc}") from None
    for path in (paths.index, paths.metadata):
        if not path.is_file():
            raise IndexNotReadyError(model, f"{path.name} is missing")
        expected = manifest.get("files", {}).get(path.name)
        if expected and sha256_file(path) != expected:
            raise _Inconsistent(f"{path.name} does not match manifest.json (corrupt or being rewritten)")
    try:
        index = faiss.deserialize_index(np.fromfile(paths.index, dtype=np.uint8))
        metadata = read_jsonl(paths.metadata)
    except Exception as exc:  # FAISS raises RuntimeError on garbage; JSON ValueError
        raise IndexNotReadyError(model, f"index files unreadable: {type(exc).__name__}: {exc}") from None
    if index.ntotal != len(metadata) or index.ntotal != manifest.get("num_products"):
        raise IndexNotReadyError(model, f"index has {index.ntotal} vectors, metadata {len(metadata)} rows, "
                                        f"manifest says {manifest.get('num_products')}")
    return IndexBundle(index=index, metadata=metadata, manifest=manifest)
