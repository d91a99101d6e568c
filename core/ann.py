"""The derived FAISS index of the embedded store: built by size, tuned to a recall target, tagged with
the store generation it covers, edited in place, saved and loaded atomically.

Keys are the store's vids. Flat and IVF indexes remove vectors in place; HNSW cannot, so a removed
vid stays in the graph as a tombstone (the store no longer holds it, so a search drops it when it
reads the hits' rows) until the tombstones pass a share of the index and it is rebuilt.

The quantised types trade exact scores for memory: IVF-SQ8 keeps one byte per dimension (a quarter of
the raw vectors, close enough to rank and to score a filtered subset from memory; the shortlist is
re-scored with the stored vectors), IVF-PQ about one byte per eight dimensions (its codes only shortlist
candidates, which are re-ranked with the stored vectors).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from core.config import Settings
from core.types import Embeddings, IndexType, Metric
from utils.atomic import read_json, sha256_file, write_json_atomic

logger = logging.getLogger(__name__)

# faiss 1.15 ships a partial __init__.pyi that lacks SearchParametersHNSW, DirectMap and the keyword
# constructors of its search parameters; those few go through an untyped alias.
_faiss: Any = faiss

INDEX_JSON = "index.json"
_MIN_POINTS_PER_LIST = 39  # FAISS wants this many training points per IVF centroid
_PQ_TRAIN_MIN = 256 * _MIN_POINTS_PER_LIST  # 8-bit sub-quantisers: 256 centroids each
_OPQ_ITERATIONS = 20  # FAISS's default 50 adds minutes to a build for a rotation that has converged by then
_NPROBE_LADDER = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
_EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
_RECONSTRUCT_BATCH = 1000  # keys per FAISS call (over 1,000 it goes multi-threaded)
TOMBSTONE_SHARE = 0.1  # HNSW: rebuild once this share of the graph is dead
TUNE_MARGIN = 0.03
RERANK_FACTOR = 10  # IVF-PQ: candidates re-ranked with exact stored vectors, per result asked for
SQ_RESCORE_FACTOR = 2  # IVF-SQ8: candidates re-scored with the stored vectors, per result asked for
QUANTISED_MAX_NLIST = 4096  # IVF-SQ8 / IVF-PQ lists: more would make k-means and assignment take hours on
# a small machine (each added vector is compared with every centroid)


def choose_index_type(num_vectors: int, settings: Settings) -> IndexType:
    """auto: exact while cheap, HNSW while it builds in minutes, IVF-Flat beyond, IVF-SQ8 when raw
    float32 vectors should no longer sit in RAM, IVF-PQ when even one byte per dimension is too much."""
    if num_vectors <= settings.flat_max_products:
        return IndexType.FLAT
    if num_vectors <= settings.hnsw_max_products:
        return IndexType.HNSW
    if num_vectors <= min(settings.ivfsq_min_products, settings.ivfpq_min_products):
        return IndexType.IVF
    if num_vectors <= settings.ivfpq_min_products:
        return IndexType.IVFSQ
    return IndexType.IVFPQ


def ivf_nlist(num_vectors: int) -> int:
    return max(1, min(int(4 * math.sqrt(num_vectors)), num_vectors // _MIN_POINTS_PER_LIST))


def _pq_m(dim: int) -> int:
    """Sub-quantisers: about 8 dimensions each at CLIP sizes (64 bytes a vector at 512-d), 2 each for
    small dims (coarser codes cannot rank them); always a divisor of ``dim``."""
    per = 8 if dim > 128 else 2
    for m in (dim // per, dim // 4, dim // 2, dim):
        if m and dim % m == 0 and m <= 96:
            return m
    return 1


def faiss_metric(metric: Metric) -> int:
    return int(faiss.METRIC_INNER_PRODUCT if metric == Metric.COSINE else faiss.METRIC_L2)


def to_cosine(dist: np.ndarray, metric: Metric) -> np.ndarray:
    scores = dist if metric == Metric.COSINE else 1.0 - dist / 2.0  # |a-b|^2 = 2 - 2cos for unit vectors
    return np.clip(scores, -1.0, 1.0).astype(np.float32)


def empty_index(kind: IndexType, dim: int, n: int, metric: Metric, settings: Settings) -> faiss.Index:
    """An untrained index of ``kind`` for about ``n`` vectors, keyed by vid."""
    fm = faiss_metric(metric)
    flat = faiss.IndexFlatIP(dim) if metric == Metric.COSINE else faiss.IndexFlatL2(dim)
    # IDMap2 keeps a vid -> position map, so a filtered search can read exact vectors back by vid
    if kind == IndexType.FLAT:
        return faiss.IndexIDMap2(flat)
    if kind == IndexType.HNSW:
        hnsw = faiss.IndexHNSWFlat(dim, settings.hnsw_m, fm)
        hnsw.hnsw.efConstruction = max(40, 2 * settings.hnsw_m)
        return faiss.IndexIDMap2(hnsw)
    nlist = ivf_nlist(n) if kind == IndexType.IVF else min(ivf_nlist(n), QUANTISED_MAX_NLIST)
    if kind == IndexType.IVF:
        return faiss.IndexIVFFlat(flat, dim, nlist, fm)
    if kind == IndexType.IVFSQ:
        # codes of the residual to the list's centroid: finer than coding the vector itself, for the
        # same byte per dimension
        return faiss.index_factory(dim, f"IVF{nlist},SQ8", fm)
    m = _pq_m(dim)
    # 8-bit codes need 256 centroids per sub-quantiser (about 10k training points); a smaller catalogue
    # (only when ivfpq is forced) gets 6-bit codes, which train in a fraction of the time
    nbits = 8 if train_size(IndexType.IVFPQ, n) >= _PQ_TRAIN_MIN else 6
    if dim <= 128:  # OPQ's rotation pays on CLIP-sized vectors; on small ones it costs minutes for little
        return faiss.index_factory(dim, f"IVF{nlist},PQ{m}x{nbits}", fm)
    index = faiss.index_factory(dim, f"OPQ{m},IVF{nlist},PQ{m}x{nbits}", fm)
    opq = _faiss.downcast_VectorTransform(_faiss.downcast_index(index).chain.at(0))
    opq.niter = _OPQ_ITERATIONS
    return index


def needs_training(kind: IndexType) -> bool:
    return kind in (IndexType.IVF, IndexType.IVFSQ, IndexType.IVFPQ)


def train_size(kind: IndexType, n: int) -> int:
    if kind == IndexType.IVF:
        return min(n, max(50_000, _MIN_POINTS_PER_LIST * ivf_nlist(n)))
    if kind == IndexType.IVFSQ:
        return min(n, max(50_000, _MIN_POINTS_PER_LIST * min(ivf_nlist(n), QUANTISED_MAX_NLIST)))
    return min(n, max(100_000, _PQ_TRAIN_MIN, _MIN_POINTS_PER_LIST * min(ivf_nlist(n), QUANTISED_MAX_NLIST)))


def _prepare_ivf(index: faiss.Index) -> None:
    """In-place removal needs a vid -> list map; IVF builds it as a hash table."""
    faiss.extract_index_ivf(index).set_direct_map_type(_faiss.DirectMap.Hashtable)


@dataclass(frozen=True)
class IndexInfo:
    """What index.json records: the type, the generation covered, the tuned search parameter."""

    kind: IndexType
    dim: int
    metric: Metric
    generation: int
    count: int
    head: str | None = None
    params: dict[str, int] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)
    built_at: str = ""
    file: str = ""
    bytes: int = 0  # the file's size and sha256 as written (0 / "": an index saved before they were recorded)
    sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "dim": self.dim, "metric": self.metric.value, "generation": self.generation,
                "count": self.count, "head": self.head, "params": self.params, "tuning": self.tuning,
                "built_at": self.built_at, "file": self.file, "bytes": self.bytes, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IndexInfo:
        return cls(kind=IndexType(data["kind"]), dim=int(data["dim"]), metric=Metric(data["metric"]),
                   generation=int(data["generation"]), count=int(data.get("count", 0)), head=data.get("head"),
                   params=dict(data.get("params") or {}), tuning=dict(data.get("tuning") or {}),
                   built_at=str(data.get("built_at") or ""), file=str(data.get("file") or ""),
                   bytes=int(data.get("bytes") or 0), sha256=str(data.get("sha256") or ""))


class _RWLock:
    """Many searches at once, or one edit: FAISS indexes are not safe to search while being edited.
    An edit holds it for the add or remove alone (microseconds to milliseconds)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    def read(self) -> _Guard:
        return _Guard(self._acquire_read, self._release_read)

    def write(self) -> _Guard:
        return _Guard(self._acquire_write, self._release_write)

    def _acquire_read(self) -> None:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1

    def _release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def _acquire_write(self) -> None:
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True

    def _release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()


class _Guard:
    def __init__(self, enter: Callable[[], None], leave: Callable[[], None]) -> None:
        self._enter, self._leave = enter, leave

    def __enter__(self) -> None:
        self._enter()

    def __exit__(self, *exc: object) -> None:
        self._leave()


class Described:
    """A served index's kind and generation, read from its ``info`` (the local and the Milvus store's alike)."""

    info: IndexInfo

    @property
    def kind(self) -> IndexType:
        return self.info.kind

    @property
    def generation(self) -> int:
        return self.info.generation


class LiveIndex(Described):
    """A FAISS index over the store's vids, kept current by :meth:`apply`."""

    def __init__(self, index: faiss.Index, info: IndexInfo, dead: int = 0) -> None:
        self.index = index
        self.info = info
        self.dead = dead  # HNSW tombstones (upper bound)
        self._lock = _RWLock()

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def lossy(self) -> bool:
        """PQ codes: the index cannot give usable vectors back (only a shortlist of candidates)."""
        return self.kind == IndexType.IVFPQ

    @property
    def rescore_factor(self) -> int:
        """Candidates per result asked for whose scores come from the stored vectors instead of the
        index's codes: IVF-PQ's codes only shortlist (10), IVF-SQ8's rank well but their scores are off
        by about 1e-3 (2, which also settles the order at the edge of the top k); 0 where exact."""
        return {IndexType.IVFPQ: RERANK_FACTOR, IndexType.IVFSQ: SQ_RESCORE_FACTOR}.get(self.kind, 0)

    def search(self, queries: Embeddings, k: int, widen: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(cosine scores, vids), each (n, k); -1 where fewer exist. ``widen`` scales nprobe/efSearch."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(int(k), max(1, self.ntotal)))
        params = self._params(k, widen)
        with self._lock.read():
            dist, vids = self.index.search(queries, k, params=params) if params else self.index.search(queries, k)
        return to_cosine(dist, self.info.metric), vids

    def _params(self, k: int, widen: int) -> faiss.SearchParameters | None:
        if self.kind == IndexType.HNSW:
            ef = max(k, self.info.params.get("ef_search", 64) * widen)
            params: faiss.SearchParameters = _faiss.SearchParametersHNSW(efSearch=int(ef))
            return params
        if self.kind in (IndexType.IVF, IndexType.IVFSQ):
            params = _faiss.SearchParametersIVF(nprobe=int(self._nprobe(widen)))
            return params
        if self.kind == IndexType.IVFPQ:
            ivf: faiss.SearchParameters = _faiss.SearchParametersIVF(nprobe=int(self._nprobe(widen)))
            if not isinstance(self.index, faiss.IndexPreTransform):
                return ivf
            params = faiss.SearchParametersPreTransform()
            params.index_params = ivf
            return params
        return None

    def _nprobe(self, widen: int) -> int:
        nlist = faiss.extract_index_ivf(self.index).nlist
        return int(min(nlist, self.info.params.get("nprobe", 16) * widen))

    def apply(self, generation: int, added_keys: np.ndarray, added: Embeddings, removed_keys: np.ndarray) -> None:
        """Bring the index to ``generation``: drop ``removed_keys``, add ``added`` under ``added_keys``."""
        with self._lock.write():
            if len(removed_keys):
                if self.kind == IndexType.HNSW:
                    # only vids the graph holds become tombstones: a product added and deleted after this
                    # index's generation never reached it (counting those made /health drift below the store)
                    self.dead += int(self._held(removed_keys).sum())
                else:
                    self._remove(np.ascontiguousarray(removed_keys, dtype=np.int64))
            if len(added_keys) and self.kind == IndexType.HNSW:
                self.dead += int(self._held(added_keys).sum())  # a replayed add: the older copy is a tombstone
            elif len(added_keys):
                self._remove(np.ascontiguousarray(added_keys, dtype=np.int64))  # a replayed add replaces
            if len(added_keys):
                self.index.add_with_ids(np.ascontiguousarray(added, dtype=np.float32),
                                        np.ascontiguousarray(added_keys, dtype=np.int64))
            self.info = replace(self.info, generation=generation, count=self.ntotal - self.dead)

    def reconstruct(self, vids: np.ndarray) -> Embeddings | None:
        """The indexed vectors of ``vids`` (exact for flat, HNSW and IVF, within about 1e-2 per dimension for
        IVF-SQ8), or None if one is not held."""
        keys = np.ascontiguousarray(vids, dtype=np.int64)
        out: Embeddings = np.empty((len(keys), self.info.dim), dtype=np.float32)
        try:
            with self._lock.read():
                # FAISS fans a batch of over 1,000 keys out to OpenMP threads, which spin against the API's
                # other threads on a busy machine: batches of 1,000 stay on this one
                for start in range(0, len(keys), _RECONSTRUCT_BATCH):
                    self.index.reconstruct_batch(keys[start:start + _RECONSTRUCT_BATCH],
                                                 out[start:start + _RECONSTRUCT_BATCH])
        except RuntimeError:  # a vid written by another process that this index has not replayed yet
            return None
        return out

    def _held(self, keys: np.ndarray) -> np.ndarray:
        """Which of ``keys`` the index holds (IDMap2 indexes: flat and HNSW)."""
        keys = np.asarray(keys, dtype=np.int64)
        if len(keys) <= 64:  # an edit: a hash lookup each, no copy of the id map
            return np.array([self._holds(int(k)) for k in keys], dtype=bool)
        return np.isin(keys, faiss.vector_to_array(_faiss.downcast_index(self.index).id_map))

    def _holds(self, key: int) -> bool:
        try:
            self.index.reconstruct(key)
        except RuntimeError:
            return False
        return True

    def _remove(self, keys: np.ndarray) -> None:
        if self.kind == IndexType.FLAT:
            self.index.remove_ids(faiss.IDSelectorBatch(keys))
        else:  # IVF's hash-table direct map removes by an explicit id array, one list at a time
            self.index.remove_ids(faiss.IDSelectorArray(keys))

    def needs_compaction(self) -> bool:
        return self.kind == IndexType.HNSW and self.dead > max(1000, TOMBSTONE_SHARE * self.ntotal)

    # --- files -----------------------------------------------------------------------------------
    def save(self, folder: Path) -> IndexInfo:
        """Write ``index-<generation>.faiss``, read it back against what was written (size and sha256: FAISS
        itself only prints a failed close), then index.json (last, atomically) naming it; older files go.
        Raises OSError (a full disk: ENOSPC) or ValueError when the file on disk is not what was written."""
        folder.mkdir(parents=True, exist_ok=True)
        name = f"index-{self.generation:012d}.faiss"
        tmp = folder / f".{name}.tmp"
        try:
            with self._lock.read():
                size, sha = _write_verified(self.index, tmp)
                info = replace(self.info, file=name, bytes=size, sha256=sha)
            tmp.replace(folder / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        write_json_atomic(folder / INDEX_JSON, info.to_json())
        self.info = info
        for old in folder.glob("index-*.faiss"):
            if old.name != name:
                old.unlink(missing_ok=True)
        return info

    @classmethod
    def load(cls, folder: Path) -> LiveIndex:
        """The saved index; raises ValueError/OSError/RuntimeError when it is missing, cut short or unreadable."""
        info = IndexInfo.from_json(read_json(folder / INDEX_JSON))
        check_saved(folder, info)
        index = faiss.read_index(str(folder / info.file))
        if index.ntotal < info.count or index.d != info.dim:
            raise ValueError(f"{info.file} holds {index.ntotal} vectors of {index.d} dims, index.json says "
                             f"{info.count} of {info.dim}")
        return cls(index, info, dead=int(index.ntotal) - info.count)


def check_saved(folder: Path, info: IndexInfo) -> None:
    """Raise ValueError unless the index file index.json names exists with the size it was written at (a
    cheap check: the sha256 was compared when it was written)."""
    path = folder / info.file
    if not info.file or not path.is_file():
        raise ValueError(f"index file {info.file or '(none)'} named by index.json is missing")
    if info.bytes and path.stat().st_size != info.bytes:
        raise ValueError(f"{info.file} has {path.stat().st_size} bytes, {info.bytes} were written: it is cut short "
                         "or damaged")


def _write_verified(index: faiss.Index, path: Path) -> tuple[int, str]:
    """Serialise ``index`` to ``path`` through Python (so a failed write raises), fsync it and read it back:
    (bytes, sha256). Raises OSError on a write error, ValueError when the file differs from what was sent."""
    digest, written = hashlib.sha256(), 0
    with open(path, "wb") as fh:
        def chunk(data: bytes) -> int:
            nonlocal written
            fh.write(data)
            digest.update(data)
            written += len(data)
            return len(data)

        faiss.write_index(index, _faiss.PyCallbackIOWriter(chunk, 1 << 20))
        fh.flush()
        os.fsync(fh.fileno())
    on_disk = path.stat().st_size
    if on_disk != written or sha256_file(path) != digest.hexdigest():
        raise ValueError(f"{path.name}: {written} bytes written but the file reads back differently "
                         f"({on_disk} bytes)")
    return written, digest.hexdigest()


def build(batches: Callable[[], Iterator[tuple[np.ndarray, Embeddings]]], sample: Embeddings, n: int, dim: int,
          kind: IndexType, metric: Metric, settings: Settings, *, generation: int, head: str | None) -> LiveIndex:
    """Build an index of ``kind`` from ``batches()`` (vid, vector) chunks; IVF types train on ``sample``."""
    index = empty_index(kind, dim, n, metric, settings)
    if needs_training(kind):
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        _prepare_ivf(index)
    for vids, vectors in batches():
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), vids)
    params = {"ef_search": settings.hnsw_ef_search} if kind == IndexType.HNSW else (
        {"nprobe": min(settings.ivf_nprobe, faiss.extract_index_ivf(index).nlist)} if needs_training(kind) else {})
    info = IndexInfo(kind=kind, dim=dim, metric=metric, generation=generation, count=int(index.ntotal), head=head,
                     params=params, built_at=datetime.now(UTC).isoformat(timespec="seconds"))
    return LiveIndex(index, info)


def tune(live: LiveIndex, queries: Embeddings, truth: list[set[int]], self_vids: np.ndarray, settings: Settings,
         rerank: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, Any]:
    """Raise nprobe / efSearch until recall@10 on held-out queries reaches the target within the latency
    budget; keep the cheapest setting that does (or the best one in budget) and record every step."""
    if live.kind not in (IndexType.HNSW, IndexType.IVF, IndexType.IVFSQ, IndexType.IVFPQ):
        return {"reason": "exact index: nothing to tune", "recall_at_10": 1.0}
    key = "ef_search" if live.kind == IndexType.HNSW else "nprobe"
    ladder = _EF_LADDER if key == "ef_search" else tuple(
        p for p in _NPROBE_LADDER if p <= faiss.extract_index_ivf(live.index).nlist)
    # stored vectors as queries are easier than new photos (measured: 0.989 tuned vs 0.953 on noisy
    # queries at 100k), so the tuner aims a little above the target
    target, budget = min(0.999, settings.recall_target + TUNE_MARGIN), settings.tune_latency_ms
    tried: list[dict[str, float]] = []
    chosen: dict[str, float] | None = None
    for value in ladder:
        live.info = replace(live.info, params={**live.info.params, key: value})
        recall, ms = _measure(live, queries, truth, self_vids, rerank)
        tried.append({key: value, "recall_at_10": round(recall, 4), "ms": round(ms, 3)})
        if ms > budget and tried[:-1]:
            break
        chosen = tried[-1]
        if recall >= target:
            break
    assert chosen is not None
    live.info = replace(live.info, params={**live.info.params, key: int(chosen[key])})
    met = chosen["recall_at_10"] >= target
    reason = (f"{key}={int(chosen[key])}: the smallest value reaching recall@10 {target} "
              f"({chosen['recall_at_10']}) at {chosen['ms']} ms per query" if met else
              f"{key}={int(chosen[key])}: recall@10 {chosen['recall_at_10']} is the best within the "
              f"{budget} ms budget (target {target} not reached)")
    logger.info("index tuning: %s", reason)
    tuning = {"target": target, "budget_ms": budget, "queries": len(queries), "reason": reason,
              "recall_at_10": chosen["recall_at_10"], "ms": chosen["ms"], "tried": tried}
    live.info = replace(live.info, tuning=tuning)
    return tuning


def _measure(live: LiveIndex, queries: Embeddings, truth: list[set[int]], self_vids: np.ndarray,
             rerank: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None) -> tuple[float, float]:
    faiss.omp_set_num_threads(1)  # measured as the API searches: one query, one thread
    hits, times = 0, []
    k = 11 if rerank is None else 10 * max(1, live.rescore_factor)
    for q, want, own in zip(queries, truth, self_vids, strict=True):
        start = time.perf_counter()
        scores, vids = live.search(q[None], k)
        if rerank is not None:
            scores, vids = rerank(q, vids[0])
            vids = vids[None]
        times.append(time.perf_counter() - start)
        got = [int(v) for v in vids[0] if v >= 0 and v != own][:10]
        hits += len(want.intersection(got))
    faiss.omp_set_num_threads(_cores())
    return hits / max(1, sum(len(t) for t in truth)), 1000 * float(np.median(times))


def _cores() -> int:
    return os.cpu_count() or 1


def exact_top(batches: Iterator[tuple[np.ndarray, Embeddings]], queries: Embeddings, self_vids: np.ndarray,
              k: int = 10) -> list[set[int]]:
    """Exact top-``k`` vids per query (each query's own vid left out), streaming over the vectors."""
    best_s = np.full((len(queries), k + 1), -np.inf, dtype=np.float32)
    best_v = np.full((len(queries), k + 1), -1, dtype=np.int64)
    for vids, vectors in batches:
        scores = queries @ vectors.T
        scores[vids[None, :] == self_vids[:, None]] = -np.inf
        all_s = np.concatenate([best_s, scores], axis=1)
        all_v = np.concatenate([best_v, np.broadcast_to(vids, scores.shape)], axis=1)
        top = np.argpartition(-all_s, k, axis=1)[:, : k + 1]
        best_s = np.take_along_axis(all_s, top, axis=1)
        best_v = np.take_along_axis(all_v, top, axis=1)
    out = []
    for s, v in zip(best_s, best_v, strict=True):
        order = np.argsort(-s)[:k]
        out.append({int(x) for x in v[order] if x >= 0})
    return out
