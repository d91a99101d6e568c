"""``run_training.py <m> --copy-store local|milvus``: copy a model into the other store, then check it.

Products (metadata, source, raw CLIP and indexed vectors) stream over a batch at a time; the target
keeps nothing the source lacks. The pipeline's build state (staged rows, fetched images, view vectors)
is copied too, so the next build on the target refetches and re-embeds nothing. The target's index
is then built for its size and calibrated, and the copy is checked: the same product count, and the
same top-10 for a seeded sample of the catalogue's own vectors.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from core.config import Settings
from core.errors import ConfigError, MissingInputError
from core.model_config import ModelSpec
from core.store import ModelStore, ProductVector, Source
from core.types import StoreKind
from pipeline.state import BuildState

logger = logging.getLogger(__name__)

BATCH = 2000
CHECK_QUERIES = 50
BUILD_TABLES = ("csv_products", "images", "views", "state_meta")


@dataclass(frozen=True)
class CopyReport:
    model: str
    source: StoreKind
    target: StoreKind
    products: int
    target_count: int
    queries: int
    identical: int  # queries whose top-10 lists are the same, in the same order
    overlap: float  # mean share of the source's top-10 found in the target's
    seconds: float

    @property
    def ok(self) -> bool:
        return self.target_count == self.products and self.overlap >= 0.9

    def lines(self) -> list[str]:
        verdict = "the copy checks out" if self.ok else "THE COPY DIFFERS"
        return [f"{self.model}: copied {self.products} products from the {self.source} store to the {self.target} "
                f"store in {self.seconds:.1f} s",
                f"  count: {self.products} in the {self.source} store, {self.target_count} in the {self.target} store",
                f"  top-10 of {self.queries} sampled products: {self.identical} identical, mean overlap "
                f"{self.overlap:.1%} - {verdict}",
                f"  to serve it from there: set \"store\": \"{self.target}\" in data/{self.model}/model.json "
                f"(or IMAGESEARCH_STORE={self.target}) and restart the API"]


def copy_store(settings: Settings, spec: ModelSpec, target: StoreKind) -> CopyReport:
    """Copy ``spec``'s catalogue from its own store into ``target`` and check the result."""
    from core.catalogue_store import open_store, store_exists
    from pipeline.runner import model_lock

    source_kind = spec.store_for(settings)
    if target == source_kind:
        raise ConfigError(f"model {spec.name!r} already lives in the {target} store; --copy-store names the "
                          f"other one ({'milvus' if target == StoreKind.LOCAL else 'local'})")
    if not store_exists(settings, spec):
        raise MissingInputError(spec.name, f"no catalogue to copy; build it first (python run_training.py {spec.name})")
    start = time.perf_counter()
    with model_lock(spec.paths(settings).models, spec.name):
        source = open_store(settings, spec)
        dest = open_store(settings, replace(spec, store=target), open_index=False)
        try:
            if not source.count():
                raise MissingInputError(spec.name, "the catalogue holds no product; nothing to copy")
            copied = copy_products(source, dest)
            state = BuildState.of(source)
            try:
                copy_build_state(state.db.path, dest)
            finally:
                state.close()
            dest.rebuild(save=True)
            identical, overlap, queries = _compare(source, dest, settings.seed)
            report = CopyReport(spec.name, source_kind, target, copied, dest.count(), queries, identical, overlap,
                                time.perf_counter() - start)
        finally:
            dest.close()
            source.close()
    logger.info("%s", "; ".join(report.lines()))
    return report


def product_batches(source: ModelStore, batch: int = BATCH) -> Iterator[list[ProductVector]]:
    """Every product of ``source`` - metadata, source, updated time, raw CLIP and indexed vectors - a batch at a
    time, through the store protocol (either store). A product deleted meanwhile is left out."""
    for ids, clips in source.scan_vectors(batch, clip=True):
        products = {p.id: p for p in source.get(ids)}
        present = [(i, pid) for i, pid in enumerate(ids) if pid in products]
        vectors = _indexed(source, [pid for _, pid in present])
        yield [ProductVector(products[pid], clip=clips[i], vector=vectors.get(pid)) for i, pid in present]


def _indexed(source: ModelStore, ids: list[str]) -> dict[str, np.ndarray]:
    """The indexed vectors of ``ids`` where a head makes them differ from the CLIP ones (else none)."""
    if source.head is None or not ids:
        return {}
    try:
        return dict(zip(ids, source.vectors(ids), strict=True))
    except KeyError:  # one was deleted since it was listed: read the survivors one by one
        found: dict[str, np.ndarray] = {}
        for pid in ids:
            with contextlib.suppress(KeyError):
                found[pid] = source.vectors([pid])[0]
        return found


def copy_products(source: ModelStore, dest: ModelStore) -> int:
    """Stream every product across (unchanged ones are skipped by the target), then drop what the target
    holds beyond the source."""
    total = 0
    for items in product_batches(source):
        dest.upsert(items)
        total += len(items)
    kept = (pid for ids, _ in source.scan_vectors(BATCH) for pid in ids)
    dest.delete_missing(kept, sources=[Source.CSV, Source.API])
    return total


def copy_build_state(source: Path, dest: ModelStore) -> None:
    """The build machine's state (staged rows, fetched images, view vectors) from the SQLite file ``source``
    into ``dest``'s, table by table (the pipeline's own schema is created first)."""

    state = BuildState.of(dest)
    state.close()
    if source.resolve() == state.db.path.resolve():
        return
    conn = sqlite3.connect(state.db.path, timeout=60, isolation_level=None)  # ATTACH needs no open transaction
    try:
        conn.execute("ATTACH DATABASE ? AS src", (str(source),))
        present = {r[0] for r in conn.execute("SELECT name FROM src.sqlite_master WHERE type = 'table'")}
        conn.execute("BEGIN IMMEDIATE")
        for table in BUILD_TABLES:
            conn.execute(f"DELETE FROM main.{table}")
            if table not in present:  # a catalogue never built by the pipeline (written by a tool) has none
                continue
            conn.execute(f"INSERT INTO main.{table} SELECT * FROM src.{table}")
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE src")
    finally:
        conn.close()


def _compare(source: ModelStore, dest: ModelStore, seed: int) -> tuple[int, float, int]:
    """Top-10 of both stores for a seeded sample of the catalogue's own vectors."""
    _, queries = source.sample_vectors(CHECK_QUERIES, seed)
    if not len(queries):
        return 0, 1.0, 0
    ours = source.search(queries, 10)
    theirs = dest.search(queries, 10)
    identical, shares = 0, []
    for a, b in zip(ours, theirs, strict=True):
        left, right = [h.product.id for h in a], [h.product.id for h in b]
        identical += left == right
        shares.append(len(set(left) & set(right)) / max(1, len(left)))
    return identical, float(np.mean(shares)), len(queries)

