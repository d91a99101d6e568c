"""The catalogue store: one model's products and vectors, durable and incremental.

``CatalogueStore`` is the protocol the pipeline and the API write to and search through. It names
no storage engine: the embedded default (``core.local_store``: SQLite tables, ``core.sqlite_store``, and a
FAISS index derived from them) and a distributed one (``core.milvus_store``: a Milvus collection) plug in
behind the same calls. Every write bumps the store's *generation* (in one transaction where the engine has
them); ``refresh`` lets a derived index (or another process) catch up.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from core.encoder import l2_normalize
from core.types import Embeddings, IndexType

if TYPE_CHECKING:
    from core.ann import IndexInfo
    from core.calibration import Calibration, TextEncoder
    from core.config import Settings
    from core.head import ProjectionHead
    from core.lexical import LexicalConfig

ExtraValue = str | int | float | bool | None

FILTER_COLUMN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_ .-]{0,63}")
"""Extra columns whose names match this can be filtered on (others are kept, not filterable)."""


class Source(StrEnum):
    """Who wrote a product: the CSV through the pipeline, or one edit through the API."""

    CSV = "csv"
    API = "api"


@dataclass(frozen=True)
class Product:
    """A product's metadata as stored and served (no vector).

    ``view_caches``: the image cache's file for each of ``images``, in order ('' where that image could not
    be used); empty when the store was never told (a catalogue written before they were kept)."""

    id: str
    title: str
    category: str = ""
    images: tuple[str, ...] = ()
    preview_image: str = ""
    preview_cache: str | None = None
    extra: Mapping[str, ExtraValue] = field(default_factory=dict)
    source: Source = Source.CSV
    updated_at: float = 0.0
    view_caches: tuple[str, ...] = ()

    def cached_view(self, n: int) -> str | None:
        """The cache file of the product's ``n``-th image, None when it has none."""
        return (self.view_caches[n] or None) if 0 <= n < len(self.view_caches) else None


@dataclass(frozen=True)
class ProductVector:
    """A product to upsert: its metadata, the raw CLIP vector and the vector as indexed (after a head).

    ``vector`` is None when the model has no head (the index holds the CLIP vector itself).
    """

    product: Product
    clip: np.ndarray
    vector: np.ndarray | None = None
    digest: str = ""
    # write only while the stored product is still this version (its ``updated_at`` when it was read): a job
    # that read a product, worked on it and writes it back never overwrites a newer edit or revives a delete
    if_version: float | None = None

    @property
    def indexed(self) -> np.ndarray:
        return self.clip if self.vector is None else self.vector


@dataclass(frozen=True)
class Filter:
    """What a search may return: a category, equality on extra columns, numeric ranges, ids left out."""

    category: str | None = None
    equals: Mapping[str, str] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    exclude_ids: tuple[str, ...] = ()

    @property
    def selective(self) -> bool:
        """True when the filter restricts by metadata (excluded ids alone do not)."""
        return self.category is not None or bool(self.equals) or bool(self.ranges)

    @property
    def empty(self) -> bool:
        """True when a range admits nothing (min above max)."""
        return any(lo is not None and hi is not None and lo > hi for lo, hi in self.ranges.values())


@dataclass(frozen=True)
class Hit:
    product: Product
    score: float
    key: int = -1  # the store's key for this version of the product's vector (-1: not known)
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)  # when the search returned it


@dataclass(frozen=True)
class Changes:
    """What happened after a generation: vectors to add (key, vector) and keys to drop."""

    generation: int
    added_keys: np.ndarray
    added_vectors: Embeddings
    removed_keys: np.ndarray

    @property
    def empty(self) -> bool:
        return not len(self.added_keys) and not len(self.removed_keys)


@dataclass(frozen=True)
class StoreStats:
    """Counts a status page shows: products, by source, by category, and the filterable columns."""

    products: int
    by_source: Mapping[str, int]
    categories: Mapping[str, int]
    columns: Mapping[str, str]  # extra column -> "text" | "number"
    generation: int


def is_number(value: ExtraValue) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    try:
        float(str(value).strip().replace(",", ""))
    except ValueError:
        return False
    return True


def number_value(value: ExtraValue) -> int | float | None:
    """A number-like extra value as a JSON number (``"58.40"`` -> 58.4, ``"1,200"`` -> 1200), as the range
    filters read it; None when it is not one."""
    if not is_number(value):
        return None
    if isinstance(value, int | float):
        return value
    text = str(value).strip().replace(",", "")
    number = float(text)
    integral = number.is_integer() and not any(c in text for c in ".eE") and abs(number) < 2**53
    return int(number) if integral else number


def typed_extra(extra: Mapping[str, ExtraValue], columns: Mapping[str, str]) -> dict[str, ExtraValue]:
    """A product's extra columns for a client: the values of number columns as numbers, the rest as stored."""
    typed = dict(extra)
    for key, value in extra.items():
        if columns.get(key) == "number":
            number = number_value(value)
            if number is not None:
                typed[key] = number
    return typed


def column_kinds(items: Sequence[ProductVector]) -> dict[str, str]:
    """The filterable extra columns these products bring, in order: "number" where every value is one, else
    "text" (empty values say nothing)."""
    kinds: dict[str, str] = {}
    for it in items:
        for key, value in it.product.extra.items():
            if value in (None, "") or not FILTER_COLUMN.fullmatch(key):
                continue
            kinds[key] = "number" if kinds.get(key, "number") == "number" and is_number(value) else "text"
    return kinds


def product_digest(it: ProductVector) -> str:
    """What makes a write a change: the metadata and both vectors (an equal digest: an unchanged product)."""
    p = it.product
    h = hashlib.sha256(json.dumps([p.id, p.title, p.category, list(p.images), p.preview_image, p.preview_cache,
                                   dict(p.extra)], sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(it.clip, dtype=np.float32).tobytes())
    if it.vector is not None:
        h.update(np.ascontiguousarray(it.vector, dtype=np.float32).tobytes())
    return h.hexdigest()


def row_digest(product: Product) -> str:
    """What identifies a product's CSV row: the fields the CSV gives (an API delete of a CSV product lasts
    until this changes)."""
    return hashlib.sha256(json.dumps([product.id, product.title, product.category, list(product.images),
                                      product.preview_image, dict(product.extra)], sort_keys=True,
                                     default=str).encode()).hexdigest()


def outlasting_delete(row: str, it: ProductVector, keep_api: bool) -> str | None:
    """Whether an API delete (its tombstone's ``row``) keeps ``it`` out of a write: the tombstone's row to keep
    when a CSV write (``keep_api``) brings the row the delete saw (an unknown row, '', becomes the first one
    met); None when the write goes ahead and the delete is over (a changed row, an API write, --drop-api-edits)."""
    if keep_api and it.product.source == Source.CSV:
        digest = row_digest(it.product)
        if row in ("", digest):
            return digest
    return None


def next_stamp(previous: float | None) -> float:
    """A write's ``updated_at``: now, and always later than the version it replaces (it is the version a
    conditional write compares), in milliseconds."""
    stamp = round(time.time(), 3)
    return stamp if previous is None or stamp > previous else round(previous + 0.001, 3)


# A product's views become one stored vector: the one rule the pipeline, admin edits and embedding jobs share.
# The mean of the views' unit CLIP vectors, normalised, is the product's CLIP vector; the model's head (if any)
# projects it into the indexed space. A build also gives each product a digest of what it was made from, so a
# rebuild that embeds the same views with the same encoder and head writes nothing.


@dataclass(frozen=True)
class ProductViews:
    """A product and the unit vectors of its usable views (one row each), with the views' cache names.

    ``if_version``: write only while the stored product is still that version (see ``ProductVector``)."""

    product: Product
    vectors: np.ndarray | Sequence[np.ndarray]
    caches: Sequence[str] = ()
    if_version: float | None = None


def product_vectors(items: Sequence[ProductViews], head: ProjectionHead | None, *,
                    build_key: str | None = None) -> list[ProductVector]:
    """Each product's stored vectors: its views' mean, normalised, then ``head`` (one matrix product for all).

    With ``build_key`` (the identity of the encoder that embedded the views) each gets the build's digest
    (:func:`build_digest`); without it the store digests what it writes (metadata and both vectors)."""
    if not items:
        return []
    clips = [l2_normalize(np.mean(np.asarray(it.vectors, dtype=np.float32), axis=0)) for it in items]
    projected = head.apply(np.stack(clips)) if head is not None else [None] * len(items)
    return [ProductVector(it.product, clip=clip, vector=vector, if_version=it.if_version,
                          digest="" if build_key is None else build_digest(it, build_key, head))
            for it, clip, vector in zip(items, clips, projected, strict=True)]


def build_digest(it: ProductViews, build_key: str, head: ProjectionHead | None) -> str:
    """What a built product was made from: its metadata, its views' cache names, the encoder and the head."""
    p = it.product
    return hashlib.sha256(json.dumps([p.id, p.title, p.category, list(p.images), p.preview_image, dict(p.extra),
                                      p.preview_cache, build_key, head.sha256 if head else None, list(it.caches)],
                                     sort_keys=True, default=str).encode()).hexdigest()


class CatalogueStore(Protocol):
    """One model's catalogue. Implementations: ``core.local_store.LocalStore`` (SQLite + FAISS, the default) and
    ``core.milvus_store.MilvusStore``."""

    @property
    def dim(self) -> int | None:
        """Dimension of the indexed vectors, None while the store is empty and has never held one."""

    def upsert(self, items: Sequence[ProductVector], *, keep_api: bool = False) -> int:
        """Insert or replace products by id in one transaction (the generation moves on); returns how
        many were written (unchanged ones are skipped). Each write gives the product a later ``updated_at``
        than the one it replaces. With ``keep_api`` (the pipeline writing the CSV) a product last written by
        the API is left as it is, and so is one an API delete removed while its CSV row is unchanged (see
        :meth:`delete`). An item with ``if_version`` is written only while the stored product still has that
        ``updated_at``. Any other write of a deleted product's id ends its delete."""

    def delete(self, ids: Sequence[str]) -> int:
        """Remove products by id (absent ids are ignored) in one transaction; returns how many went. Each is
        remembered (a tombstone with its CSV row's digest, or '' for a product the API wrote: then the first
        CSV row a later write meets), so that CSV writes keep it out until its row changes."""

    def deleted_ids(self, ids: Sequence[str]) -> list[str]:
        """Those of ``ids`` that an API delete keeps out of CSV writes (their tombstones)."""

    def delete_missing(self, keep: Iterator[str] | None, *, sources: Sequence[Source]) -> int:
        """Delete products of the given sources whose id is not in ``keep``; returns how many. Nothing is
        remembered; with ``Source.API`` among ``sources`` (the CSV becomes the whole truth) the tombstones of
        ids not in ``keep`` go too."""

    def get(self, ids: Sequence[str]) -> list[Product]:
        """The products that exist among ``ids``, in the order asked."""

    def vectors(self, ids: Sequence[str], *, clip: bool = False) -> Embeddings:
        """Indexed (or raw CLIP) vectors of ``ids``, row-aligned; raises KeyError for an absent id."""

    def search(self, queries: Embeddings, k: int, flt: Filter | None = None) -> list[list[Hit]]:
        """Best ``k`` products per query, best first, scores as cosine similarity."""

    def hit_vectors(self, hits: Sequence[Hit]) -> Embeddings:
        """The indexed vectors of ``hits``, row-aligned (from memory where the store can)."""

    def count(self) -> int: ...

    def columns(self) -> dict[str, str]:
        """Filterable extra columns: name -> "text" | "number"."""

    def stats(self) -> StoreStats: ...

    def generation(self) -> int: ...

    def refresh(self) -> bool:
        """Catch up with writes made elsewhere (another process); True when anything changed."""

    def replaced(self) -> bool:
        """True once a restore has replaced the catalogue this store opened (the model must be reloaded; until
        then it keeps serving the old one whole, and refuses writes with CatalogueReplacedError)."""

    def close(self) -> None: ...


class ServedIndex(Protocol):
    """What the pipeline and the API read of a store's index: its description and upkeep state."""

    @property
    def info(self) -> IndexInfo: ...

    @property
    def kind(self) -> IndexType: ...

    @property
    def generation(self) -> int: ...

    @property
    def ntotal(self) -> int: ...

    @property
    def dead(self) -> int: ...

    def needs_compaction(self) -> bool: ...


class ModelStore(CatalogueStore, Protocol):
    """A model's store as the pipeline, the API and the training tools use it: the catalogue plus its
    index upkeep, calibration and head. Implementations: ``core.local_store.LocalStore`` (SQLite + FAISS,
    the default) and ``core.milvus_store.MilvusStore``. It hands out no database: the pipeline keeps its own
    build state (``pipeline.state``), and a product's cached views are part of the product."""

    name: str
    folder: Path
    settings: Settings
    head: ProjectionHead | None
    text_encoder: TextEncoder | None

    @property
    def live_index(self) -> ServedIndex | None: ...

    @property
    def damaged(self) -> str | None:
        """What is wrong with the catalogue's files once a check or a read found them damaged (None: nothing)."""

    @property
    def calibration(self) -> Calibration | None: ...

    def open_index(self) -> ServedIndex | None:
        """The index, caught up or rebuilt as the catalogue's size calls for; None for an empty store."""

    def rebuild(self, *, save: bool, tune_it: bool = True, progress: object = None) -> ServedIndex: ...

    def install_index(self, live: ServedIndex) -> None: ...

    def save_index(self) -> None: ...

    def ensure_calibration(self) -> Calibration | None: ...

    def reproject(self, head: ProjectionHead | None) -> int: ...

    def scan_vectors(self, batch: int = ..., *, clip: bool = False) -> Iterator[tuple[list[str], Embeddings]]:
        """Every product's (ids, vectors) a batch at a time (bounded memory)."""

    def sample_vectors(self, n: int, seed: int) -> tuple[list[str], Embeddings]:
        """A seeded sample of up to ``n`` products' ids and indexed vectors."""

    lexical_config: LexicalConfig  # which texts find a product by its words, and which columns are identifiers

    @property
    def lexical_note(self) -> str | None:
        """Why the store finds no words (an engine without full-text search); None: it does."""

    def find_words(self, text: str, k: int, flt: Filter | None = None, vector: np.ndarray | None = None
                   ) -> list[Hit]:
        """The best ``k`` products by the words of ``text`` (``core.lexical``: what the user typed is words, never
        query syntax) that ``flt`` admits, best first. With the query's ``vector`` a store may rank products
        holding words too common to rank by (held by thousands) by their picture instead."""

    def find_identifier(self, text: str, flt: Filter | None = None) -> list[Hit]:
        """The products whose id or identifier column (sku, barcode...) is exactly ``text``: indexed lookups."""

    def lexical_bytes(self) -> int | None:
        """The lexical index's size on disk (None: not known, or none)."""
