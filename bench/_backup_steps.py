"""Steps of bench/backup.py, each in its own process so its peak RSS is its own.

    python -m bench._backup_steps --root R --model M write --stop FILE --dim D
    python -m bench._backup_steps --root R --model M backup --out DIR
    python -m bench._backup_steps --root R --model M restore --backup DIR --as NAME

Each ends with one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._scale_store import peak_rss_mb, percentiles  # noqa: E402
from core.config import Settings, load_settings  # noqa: E402
from core.local_store import LocalStore  # noqa: E402
from core.model_config import ModelSpec  # noqa: E402
from core.store import Product, ProductVector  # noqa: E402


def write(settings: Settings, model: str, stop: Path, dim: int) -> dict[str, Any]:
    """One-product upserts (new ids), each its own commit, until ``stop`` exists: each write's wall time,
    commit seconds and generation."""
    store = LocalStore(settings.models_dir / model, settings, name=model, open_index=False)
    rng = np.random.default_rng(7)
    writes: list[tuple[float, float, int]] = []
    while not stop.exists():
        vector = rng.standard_normal(dim).astype(np.float32)
        item = ProductVector(Product(id=f"live-{len(writes)}", title="written during the backup", category="live"),
                             clip=vector / np.linalg.norm(vector))
        start = time.perf_counter()
        store.upsert([item])
        writes.append((time.time(), time.perf_counter() - start, store.generation()))
        if len(writes) == 20:
            stop.with_name(stop.name + ".ready").touch()
        time.sleep(0.005)  # an edit stream, not a bulk load
    store.close()
    return {"writes": writes}


def during(writes: list[list[float]], start: float, end: float) -> dict[str, Any]:
    """The writes committed while the backup ran (how many, their commit latency) beside those committed
    before it started (the baseline: the same writer, no backup), and the generations around it."""
    inside = [w[1] for w in writes if start <= w[0] <= end]
    before = [w[1] for w in writes if w[0] < start]
    none = {"p50_ms": None, "p99_ms": None}
    base = percentiles(before) if before else none
    return {"during": len(inside), **(percentiles(inside) if inside else none), "before": len(before),
            "before_p50_ms": base["p50_ms"], "before_p99_ms": base["p99_ms"],
            "first_generation": writes[0][2], "last_generation": writes[-1][2]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--model", required=True)
    sub = parser.add_subparsers(dest="step", required=True)
    w = sub.add_parser("write")
    w.add_argument("--stop", type=Path, required=True)
    w.add_argument("--dim", type=int, required=True)
    b = sub.add_parser("backup")
    b.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("restore")
    r.add_argument("--backup", type=Path, required=True)
    r.add_argument("--as", dest="as_name", required=True)
    args = parser.parse_args(argv)
    settings = load_settings(root=args.root)
    start = time.perf_counter()
    if args.step == "write":
        result = write(settings, args.model, args.stop, args.dim)
    elif args.step == "backup":
        from pipeline.backup import backup_model

        began = time.time()
        report = backup_model(settings, ModelSpec(name=args.model), args.out)
        result = {"path": str(report.path), "generation": report.generation, "products": report.products,
                  "bytes": report.bytes, "began": began, "ended": time.time()}
    else:
        from pipeline.restore import restore_backup

        done = restore_backup(settings, args.backup, name=args.as_name)
        result = {"products": done.products, "generation": done.generation}
    print(json.dumps({**result, "seconds": round(time.perf_counter() - start, 2), "peak_rss_mb": round(peak_rss_mb())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
