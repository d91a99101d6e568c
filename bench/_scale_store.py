"""Store-side steps of bench/scale.py, each run in its own process so its peak RSS is its own.

    python -m bench._scale_store build --root R --model M --products N --dim D
    python -m bench._scale_store ops   --root R --model M --products N --dim D --edits E

Each prints progress to stderr and ends with one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._scale_data import Synthetic, category, category_name, product_id  # noqa: E402
from core.catalogue_store import open_store  # noqa: E402
from core.config import Settings, load_settings  # noqa: E402
from core.local_store import LocalStore  # noqa: E402
from core.store import ModelStore  # noqa: E402
from core.model_config import ModelSpec  # noqa: E402
from core.store import Product, ProductVector  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(1000 * s for s in seconds)
    return {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 3)}


def _items(syn: Synthetic, start: int, vectors: np.ndarray) -> list[ProductVector]:
    prices = syn.prices(start, len(vectors))
    cats = category(np.arange(start, start + len(vectors)))
    return [ProductVector(Product(id=product_id(start + j), title=f"Product {start + j}",
                                  category=category_name(cats[j]), extra={"price": float(prices[j])}), clip=v)
            for j, v in enumerate(vectors)]


def _db_bytes(path: Path) -> int:
    """The database with its write-ahead log (recent commits live there until a checkpoint)."""
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.is_file())


def _file_bytes(path: Path) -> int | None:
    return path.stat().st_size if path.is_file() else None


def build(store: ModelStore, syn: Synthetic) -> dict[str, Any]:
    """Upsert every chunk (one transaction each locally; Milvus writes 1,000 rows a call), then build, tune
    and save the index (Milvus: create the collection's vector index and load it; no tuning)."""
    start = time.perf_counter()
    for first, vectors in syn.chunks():
        store.upsert(_items(syn, first, vectors))
        if first and first % 100_000 == 0:
            logging.info("upserted %d of %d products (%.0f s)", first, syn.n, time.perf_counter() - start)
    upserted = time.perf_counter()
    live = store.rebuild(save=True)
    done = time.perf_counter()
    local = isinstance(store, LocalStore)
    db_bytes = _db_bytes(store.db.path) if isinstance(store, LocalStore) else None
    return {"build_s": round(done - start, 2), "upsert_all_s": round(upserted - start, 2),
            "index_s": round(done - upserted, 2), "index_type": live.kind.value,
            "index_bytes": _file_bytes(store.folder / live.info.file) if local else None,
            "engine_index_type": live.info.tuning.get("index_type", "faiss"), "index_params": live.info.params,
            "tuned_recall_at_10": live.info.tuning.get("recall_at_10"), "tuned_ms": live.info.tuning.get("ms"),
            "db_bytes": db_bytes, "db_bytes_per_product": None if db_bytes is None else round(db_bytes / max(1, syn.n)),
            "build_peak_rss_mb": round(peak_rss_mb(), 1)}


def ops(store: ModelStore, syn: Synthetic, edits: int) -> dict[str, Any]:
    """One-product upserts (new ids) then deletes of them, each its own store call, timed."""
    vectors = next(syn.chunks())[1][:edits]
    ups, dels = [], []
    for i, v in enumerate(vectors):
        item = ProductVector(Product(id=f"store-edit-{i}", title="store edit", category=category_name(i),
                                     extra={"price": 9.99}), clip=v)
        t = time.perf_counter()
        store.upsert([item])
        ups.append(time.perf_counter() - t)
    for i in range(len(vectors)):
        t = time.perf_counter()
        store.delete([f"store-edit-{i}"])
        dels.append(time.perf_counter() - t)
    up, de = percentiles(ups), percentiles(dels)
    return {"store_upsert_p50_ms": up["p50_ms"], "store_upsert_p99_ms": up["p99_ms"],
            "store_delete_p50_ms": de["p50_ms"], "store_delete_p99_ms": de["p99_ms"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["build", "ops"])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--products", type=int, required=True)
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument("--edits", type=int, default=100)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    settings: Settings = load_settings(root=args.root)
    syn = Synthetic(args.products, args.dim)
    start = time.perf_counter()
    store = open_store(settings, ModelSpec(name=args.model), open_index=args.step == "ops")
    try:
        if args.step == "build":
            result = build(store, syn)
        else:
            result = {"store_open_s": round(time.perf_counter() - start, 2), **ops(store, syn, args.edits),
                      "ops_peak_rss_mb": round(peak_rss_mb(), 1)}
    finally:
        store.close()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
