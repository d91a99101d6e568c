"""Benchmark: how vectors are kept, ours against the float32 baseline, on the scale bench's clustered vectors.

    python bench/vector_storage.py [--products 1000000] [--dim 512] [--queries 200]

1. Stored vectors: float16 (what ``core.sqlite_store`` writes) against float32: bytes per vector and recall@10
   of exact search over the decoded vectors against exact search over the float32 ones.
2. The index for 1.2M-12M products: IVF-SQ8 (``ivfsq``) against IVF-Flat, both built by ``core.ann`` with the
   list count a store build would use: memory, recall@10 and single-query latency at a few nprobe values, and
   recall with the shortlist (2 x k) re-scored from the stored float16 vectors, as the store serves it.
3. A 0.1% filter's subset scored from memory: the subset's vectors reconstructed from each index (one FAISS
   thread, 1,000 keys per call as the store asks), and whether the top-10 over the SQ8 vectors, re-scored,
   equals the exact one.

Prints the figures and their ratios, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._scale_data import Synthetic  # noqa: E402
from core.ann import LiveIndex, build, train_size  # noqa: E402
from core.config import load_settings  # noqa: E402
from core.sqlite_store import blob, unblob  # noqa: E402
from core.types import IndexType, Metric  # noqa: E402

K = 10


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))


def _exact(vectors: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 50):
        scores = queries[start:start + 50] @ vectors.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[start:start + 50] = np.take_along_axis(top, order, axis=1)
    return out


def _index(kind: IndexType, vectors: np.ndarray) -> LiveIndex:
    settings = load_settings()
    n = len(vectors)
    pick = np.sort(np.random.default_rng(0).choice(n, size=min(n, train_size(kind, n)), replace=False))
    ids = np.arange(n, dtype=np.int64)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:  # the store's (vid, vector) chunks
        for start in range(0, n, 50_000):
            yield ids[start:start + 50_000], vectors[start:start + 50_000]

    return build(batches, vectors[pick], n, vectors.shape[1], kind, Metric.COSINE, settings, generation=0, head=None)


def _searches(live: LiveIndex, queries: np.ndarray, nprobe: int, stored: np.ndarray | None
              ) -> tuple[np.ndarray, float]:
    """Top-10 per query (re-scored from ``stored`` when given, over 2 x k candidates) and the median ms."""
    import faiss

    live.info = replace(live.info, params={"nprobe": nprobe})
    faiss.omp_set_num_threads(1)
    found, times = [], []
    for q in queries:
        start = time.perf_counter()
        _, vids = live.search(q[None], 2 * K if stored is not None else K)
        row = vids[0][vids[0] >= 0]
        if stored is not None:
            row = row[np.argsort(-(stored[row] @ q), kind="stable")]
        times.append(time.perf_counter() - start)
        found.append(row[:K])
    return np.array(found), 1000 * float(np.median(times))


def _subset(live: LiveIndex, members: np.ndarray) -> tuple[np.ndarray, float]:
    import faiss

    faiss.omp_set_num_threads(1)
    start = time.process_time()
    out = live.reconstruct(members)
    assert out is not None
    return out, 1000 * (time.process_time() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args(argv)
    syn = Synthetic(args.products, args.dim)
    vectors = np.empty((args.products, args.dim), dtype=np.float32)
    for first, chunk in syn.chunks():
        vectors[first:first + len(chunk)] = chunk
    _, queries = syn.queries(args.queries)
    truth = _exact(vectors, queries)
    half = unblob([(blob(v), 1) for v in vectors[:1]])  # the store's own encoding, checked on one row
    assert np.abs(half[0] - vectors[0]).max() < 1e-3
    stored = vectors.astype(np.float16).astype(np.float32)  # the same rounding, in bulk
    result: dict[str, float] = {"products": args.products, "dim": args.dim, "bytes_float32": 4 * args.dim,
                                "bytes_float16": len(blob(vectors[0])),
                                "recall_float16_exact": round(_recall(_exact(stored, queries), truth), 4)}
    print(f"stored vectors: float16 {result['bytes_float16']} B vs float32 {result['bytes_float32']} B a vector; "
          f"exact top-10 over float16 = float32's for {result['recall_float16_exact']:.2%} of results", flush=True)
    members = np.sort(np.random.default_rng(1).choice(args.products, size=max(10, args.products // 1000),
                                                      replace=False))
    exact_subset = members[_exact(vectors[members], queries[:50])]
    for kind in (IndexType.IVF, IndexType.IVFSQ):
        start = time.perf_counter()
        live = _index(kind, vectors)
        built = time.perf_counter() - start
        import faiss

        name = kind.value
        result[f"{name}_build_s"] = round(built, 1)
        result[f"{name}_bytes"] = int(faiss.serialize_index(live.index).nbytes)
        for nprobe in (4, 8, 16):
            found, ms = _searches(live, queries, nprobe, None)
            result[f"{name}_nprobe{nprobe}_recall"] = round(_recall(found, truth), 4)
            result[f"{name}_nprobe{nprobe}_ms"] = round(ms, 3)
            if kind == IndexType.IVFSQ:
                found, ms = _searches(live, queries, nprobe, stored)
                result[f"{name}_nprobe{nprobe}_rescored_recall"] = round(_recall(found, truth), 4)
        subset, cpu_ms = _subset(live, members)
        result[f"{name}_subset_cpu_ms"] = round(cpu_ms, 2)
        got = []
        for q in queries[:50]:
            top = np.argsort(-(subset @ q), kind="stable")[:2 * K]
            got.append(members[top[np.argsort(-(stored[members[top]] @ q), kind="stable")][:K]])
        result[f"{name}_subset_top10_recall"] = round(_recall(np.array(got), exact_subset), 4)
        print(f"{name}: {result[f'{name}_bytes'] / 1e6:.0f} MB, built in {built:.0f} s; " + ", ".join(
            f"nprobe {p}: recall {result[f'{name}_nprobe{p}_recall']} in {result[f'{name}_nprobe{p}_ms']} ms"
            for p in (4, 8, 16)) + f"; {len(members)}-product subset from memory in {cpu_ms:.1f} CPU ms", flush=True)
        del live
    result["sq8_memory_ratio"] = round(result["ivfsq_bytes"] / result["ivf_bytes"], 3)
    result["sq8_subset_time_ratio"] = round(result["ivfsq_subset_cpu_ms"] / max(0.01, result["ivf_subset_cpu_ms"]), 2)
    print(f"ivfsq / ivf: memory x{result['sq8_memory_ratio']}, subset reconstruction "
          f"x{result['sq8_subset_time_ratio']}; re-scored recall at nprobe 8: "
          f"{result['ivfsq_nprobe8_rescored_recall']}", flush=True)
    print(json.dumps({"bench": "vector_storage", **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
