"""A catalogue collection's Milvus vector index: the kind the catalogue's size calls for, its build parameters,
how the served index is described, and replacing it.

The kinds follow the local store's (``core.ann.choose_index_type``): flat, HNSW, IVF, and the quantised tiers as
IVF_SQ8 (8-bit scalar codes, 4x smaller than raw vectors, exact enough to rank; milvus-lite has no IVF_PQ, so
ivfpq is served as IVF_SQ8 too). Milvus indexes the segments sealed after a build itself; changing the index
needs the collection released, which the build machine does, never a serving replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.ann import Described, IndexInfo, choose_index_type, ivf_nlist
from core.config import Settings
from core.errors import StoreError
from core.milvus_collection import Collection
from core.milvus_meta import Meta
from core.types import IndexType, Metric

MILVUS_INDEX = {IndexType.FLAT: "FLAT", IndexType.HNSW: "HNSW", IndexType.IVF: "IVF_FLAT",
                IndexType.IVFSQ: "IVF_SQ8", IndexType.IVFPQ: "IVF_SQ8"}
_KIND_OF = {v: k for k, v in MILVUS_INDEX.items() if k != IndexType.IVFPQ}
SERVED_KINDS = {k.value for k in MILVUS_INDEX}


@dataclass
class MilvusIndex(Described):
    """What the API and the pipeline read of a served index (the local store's ``LiveIndex`` has the same)."""

    info: IndexInfo
    wanted: IndexType | None = None  # the kind the catalogue's size calls for, when it differs
    dead: int = 0
    lossy: bool = False

    @property
    def ntotal(self) -> int:
        return self.info.count

    def needs_compaction(self) -> bool:
        """True when the index should be rebuilt: the catalogue has grown (or shrunk) into another kind.
        Milvus compacts its own segments; the build machine rebuilds, never a serving replica."""
        return self.wanted is not None and self.wanted != self.info.kind


def wanted_kind(n: int, settings: Settings, index_type: IndexType) -> IndexType:
    """The index kind for ``n`` products (``index_type``, or by size when it is auto)."""
    kind = choose_index_type(n, settings) if index_type == IndexType.AUTO else index_type
    kind = IndexType.IVFSQ if kind == IndexType.IVFPQ else kind  # one IVF_SQ8 index serves both tiers
    return IndexType.FLAT if kind in (IndexType.IVF, IndexType.IVFSQ) and n < 1000 else kind


def metric_name(metric: Metric) -> str:
    return "COSINE" if metric == Metric.COSINE else "L2"


def add_vector_index(params: Any, kind: IndexType, n: int, settings: Settings) -> dict[str, int]:
    """Add the vector field's index of ``kind`` for ``n`` products to ``params``; returns its build parameters."""
    build: dict[str, int] = {}
    if kind == IndexType.HNSW:
        build = {"M": settings.hnsw_m, "efConstruction": max(64, 2 * settings.hnsw_m)}
    elif kind in (IndexType.IVF, IndexType.IVFSQ, IndexType.IVFPQ):
        build = {"nlist": ivf_nlist(max(n, 1))}
    params.add_index(field_name="vector", index_name="vector", index_type=MILVUS_INDEX[kind],
                     metric_type=metric_name(settings.metric), params=build)
    return build


def search_defaults(kind: IndexType, settings: Settings) -> dict[str, int]:
    """The search parameters a new index of ``kind`` is served with."""
    if kind == IndexType.HNSW:
        return {"efSearch": settings.hnsw_ef_search}
    return {"nprobe": settings.ivf_nprobe} if kind != IndexType.FLAT else {}


class VectorIndex:
    """The vector field's index of ``io``'s collection, described in ``meta``."""

    def __init__(self, io: Collection, meta: Meta, settings: Settings) -> None:
        self._io, self._meta, self._settings = io, meta, settings

    def current(self) -> dict[str, Any] | None:
        """The vector field's index as Milvus describes it; None when it has none (a failed call raises: an
        index that cannot be read is not one to build again)."""
        io = self._io
        if not io.call(io.client.list_indexes, io.name, field_name="vector"):
            return None
        return dict(io.call(io.client.describe_index, io.name, "vector") or {})

    def kind(self) -> IndexType | None:
        found = self.current()
        return _KIND_OF.get(str(found.get("index_type", "")).upper()) if found else None

    def fits(self, kind: IndexType, build: dict[str, int]) -> bool:
        """True when the collection's vector index is of ``kind`` with these build parameters."""
        found = self.current()
        return (found is not None and _KIND_OF.get(str(found.get("index_type", "")).upper()) == kind
                and all(str(found.get(k)) == str(v) for k, v in build.items()))

    def replace(self, params: Any, kind: IndexType) -> None:
        """Milvus changes an index only on a released collection: readers get 503 until it is loaded again,
        and must not load it themselves meanwhile (the ``rebuilding`` flag; see the store's refresh)."""
        io = self._io
        self._meta.set({"rebuilding": True})
        try:
            io.call(io.client.release_collection, io.name)
            if self.kind() is not None:
                io.call(io.client.drop_index, io.name, "vector")
            try:
                io.call(io.client.create_index, io.name, params)
            except StoreError:
                # a long build can outlive its connection (a server that finds the client's keep-alive pings
                # too many drops it) and pymilvus then asks again: "index already exists", for this very index
                if self.kind() != kind:
                    raise
            io.call(io.client.load_collection, io.name)
        finally:
            self._meta.set({"rebuilding": False})

    def describe(self, kind: IndexType, n: int, *, dim: int, generation: int, head: str | None,
                 wanted: IndexType) -> MilvusIndex:
        """The served index of ``kind`` over ``n`` products, with the parameters its last build recorded."""
        settings = self._settings
        saved = self._meta.get("index", {}) or {}
        params = dict(saved.get("params") or {}) if saved.get("kind") == kind.value else {}
        if kind == IndexType.HNSW:
            params.setdefault("efSearch", settings.hnsw_ef_search)
        elif kind in (IndexType.IVF, IndexType.IVFSQ, IndexType.IVFPQ):
            params.setdefault("nprobe", settings.ivf_nprobe)
        info = IndexInfo(kind=kind, dim=dim, metric=settings.metric, generation=generation, count=n, head=head,
                         params=params, tuning={"engine": "milvus", "index_type": MILVUS_INDEX[kind]},
                         built_at=str(saved.get("built_at") or ""), file=self._io.name)
        return MilvusIndex(info=info, wanted=wanted if wanted != kind else None)
