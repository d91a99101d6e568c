"""Write latency after many distinct extra keys: the capped store (IMAGESEARCH_MAX_FILTER_COLUMNS=64, ours) against
the same store with no cap (every key filterable and indexed, as before the cap), side by side in one process.

Each store first takes 60 upserts of one product with 50 new extra keys each (3,000 distinct keys), then the
median of 50 timed upserts of one ordinary product (2,000 products behind it, 512-d vectors) is compared.

    python bench/filter_columns.py [--keys-per-write 50] [--writes 60] [--timed 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import load_settings  # noqa: E402 - after the path set-up above
from core.local_store import LocalStore  # noqa: E402
from core.store import Product, ProductVector  # noqa: E402


def _run(folder: Path, cap: int, args: argparse.Namespace) -> dict[str, float]:
    store = LocalStore(folder, load_settings(root=folder, max_filter_columns=cap), name="bench", open_index=False)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000 + args.writes + args.timed, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.upsert([ProductVector(Product(id=f"b{i}", title=f"Base {i}", extra={"price": str(i % 90)}), clip=v)
                  for i, v in enumerate(vectors[:2000])])
    for n in range(args.writes):
        extra = {f"k{n}_{j}": str(j) for j in range(args.keys_per_write)}
        store.upsert([ProductVector(Product(id=f"w{n}", title="wide", extra=extra), clip=vectors[2000 + n])])
    times = []
    for n in range(args.timed):
        item = ProductVector(Product(id=f"t{n}", title="plain", extra={"price": "5"}),
                             clip=vectors[2000 + args.writes + n])
        start = time.perf_counter()
        store.upsert([item])
        times.append((time.perf_counter() - start) * 1000)
    indexes = store.db.reader().execute("SELECT count(*) FROM sqlite_master WHERE type='index'").fetchone()[0]
    store.close()
    return {"p50_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2), "indexes": indexes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys-per-write", type=int, default=50)
    parser.add_argument("--writes", type=int, default=60)
    parser.add_argument("--timed", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ours = _run(Path(tmp) / "capped", 64, args)
        baseline = _run(Path(tmp) / "uncapped", 10 + args.writes * args.keys_per_write, args)
    ratio = baseline["p50_ms"] / max(ours["p50_ms"], 1e-6)
    print(f"uncapped (baseline): {baseline['indexes']} indexes, write p50 {baseline['p50_ms']} ms, "
          f"max {baseline['max_ms']} ms")
    print(f"capped at 64 (ours): {ours['indexes']} indexes, write p50 {ours['p50_ms']} ms, max {ours['max_ms']} ms")
    print(f"ratio: {ratio:.1f}x")
    print(json.dumps({"bench": "filter_columns", "ours": ours, "baseline": baseline, "ratio": round(ratio, 1)}))


if __name__ == "__main__":
    main()
