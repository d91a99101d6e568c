"""Benchmark: serving image search over real HTTP, the naive seed design vs our API.

Both serve a ViT-B/32-sized CLIP (random weights unless IMAGESEARCH_BENCH_MODEL points at real
ones) and a 100,000-product catalogue of synthetic clustered unit vectors, each in its own uvicorn process
on 127.0.0.1, one after the other (so they never share the cores). Our catalogue is built through
the store as the pipeline fills it: ``LocalStore.upsert`` in batches, then one tuned index build.

- naive: one FastAPI endpoint doing, per request, CLIPProcessor + fp32 forward + FAISS flat
  search with default threads (a sync ``def`` endpoint, so FastAPI at least runs it off the loop);
- ours: ``run_api.py`` (decode in worker threads, micro-batched forward at the auto precision,
  FAISS index chosen by catalogue size, tuned threads).

Measures single-client p50/p95 latency and the throughput of 8 concurrent clients, then prints a
table and one JSON line with p50_ratio and throughput_ratio (ours / naive) and errors.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import photo_jpegs, vit_b32_folder  # noqa: E402

MODEL = "general"
_UPSERT_BATCH = 5000  # products per store transaction


def _synthetic_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors like product embeddings (uniform noise has no real neighbours, so tuning
    an approximate index on it asks for the widest search)."""
    from training.index_bench import synthetic_vectors

    return synthetic_vectors(n, dim, seed=seed)


def _row(i: int) -> dict:
    return {"id": f"P{i:06d}", "title": f"Product {i}", "category": f"c{i % 20}", "preview_image": None,
            "preview_cache": None, "images": [], "extra": {"price": round(5 + i % 500 * 0.5, 2)}}


def rows(n: int) -> list[dict]:
    """Synthetic product metadata (the naive server returns these rows as they are)."""
    return [_row(i) for i in range(n)]


def _items(vectors: np.ndarray, start: int, stop: int) -> list:
    """ProductVectors for rows ``start:stop``: the naive side's metadata, as the store holds products."""
    from core.store import Product, ProductVector

    out = []
    for i in range(start, stop):
        r = _row(i)
        out.append(ProductVector(Product(id=r["id"], title=r["title"], category=r["category"], extra=r["extra"]),
                                 clip=np.asarray(vectors[i], dtype=np.float32)))
    return out


def prepare(work: Path, n: int, index_type: str) -> tuple[Path, Path]:
    """The CLIP folder and the vectors file under ``work``, and our model built into its catalogue store
    (upserted in batches, then one index build, tuned and saved); reused when already there."""
    from core.catalogue_store import open_store
    from core.config import load_settings
    from core.model_config import ModelRegistry

    model_dir = vit_b32_folder(work / "vit_b32")
    settings = load_settings(root=work / "root", clip_model=str(model_dir), index_type=index_type)
    spec = ModelRegistry.discover(settings).get(MODEL)  # the spec the API will serve it under
    paths = spec.paths(settings)
    vectors_path = work / f"clustered_vectors_{n}.npy"
    if not vectors_path.is_file():
        np.save(vectors_path, _synthetic_vectors(n, 512))
    stamp = paths.models / f".bench_store_clustered_{n}_{index_type}"
    if not stamp.is_file():
        print(f"building our store and {index_type} index over {n} products (once; reused by later runs)...",
              flush=True)
        shutil.rmtree(paths.models, ignore_errors=True)  # nothing left from another size or an older layout
        start = time.perf_counter()
        vectors = np.load(vectors_path, mmap_mode="r")
        store = open_store(settings, spec, open_index=False)
        try:
            for first in range(0, n, _UPSERT_BATCH):
                store.upsert(_items(vectors, first, min(n, first + _UPSERT_BATCH)))
            upserted = time.perf_counter() - start
            live = store.rebuild(save=True)
        finally:
            store.close()
        stamp.write_text(f"upsert {upserted:.1f}s, {live.kind} index {time.perf_counter() - start - upserted:.1f}s "
                         f"({live.info.params})\n")
        print(f"  {stamp.read_text().strip()}", flush=True)
    return model_dir, vectors_path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(cmd: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    import httpx

    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server did not start in time; see {log}")


def _one(client, path: str, photo: bytes) -> float:
    start = time.perf_counter()
    r = client.post(path, params={"top_k": 10}, files={"file": ("query.jpg", photo, "image/jpeg")})
    if r.status_code != 200 or not r.json()["results"]:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
    return time.perf_counter() - start


def measure(url: str, path: str, photos: list[bytes], single: int, clients: int, seconds: float) -> dict:
    import httpx

    errors = 0
    with httpx.Client(base_url=url, timeout=120) as c:
        for p in photos[:3]:  # warm-up
            _one(c, path, p)
        lat = []
        for i in range(single):
            try:
                lat.append(_one(c, path, photos[i % len(photos)]))
            except Exception:
                errors += 1
    done, failed = [0] * clients, [0] * clients
    stop_at = time.perf_counter() + seconds

    def worker(k: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as cl:
            i = k
            while time.perf_counter() < stop_at:
                try:
                    _one(cl, path, photos[i % len(photos)])
                    done[k] += 1
                except Exception:
                    failed[k] += 1
                i += clients

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    lat_ms = sorted(x * 1000 for x in lat)
    return {"p50_ms": statistics.median(lat_ms), "p95_ms": lat_ms[max(0, round(0.95 * len(lat_ms)) - 1)],
            "throughput_rps": sum(done) / elapsed, "requests": len(lat) + sum(done),
            "errors": errors + sum(failed)}


def _run_side(name: str, cmd: list[str], env: dict, port: int, path: str, photos: list[bytes], args,
              work: Path) -> dict:
    print(f"starting {name} server...", flush=True)
    proc = _start(cmd, env, port, work / f"{name}.log")
    try:
        print(f"measuring {name}...", flush=True)
        return measure(f"http://127.0.0.1:{port}", path, photos, args.single, args.clients, args.seconds)
    finally:
        proc.terminate()
        proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--index-type", default="auto", help="our index type (auto = what the pipeline builds)")
    parser.add_argument("--single", type=int, default=40, help="sequential requests for p50/p95")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of the concurrent run")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "imagesearch-bench-api")
    args = parser.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    model_dir, vectors_path = prepare(args.work, args.products, args.index_type)
    photos = [p.read_bytes() for p in photo_jpegs(args.work / "photos", 8, size=(1000, 800))]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESEARCH_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    port = _free_port()
    naive = _run_side("naive", [sys.executable, "-m", "bench._naive_server", str(port), str(model_dir),
                                str(vectors_path)], env, port, "/search_products/", photos, args, args.work)
    ours_env = {**env, "IMAGESEARCH_ROOT": str(args.work / "root"), "IMAGESEARCH_CLIP_MODEL": str(model_dir),
                "IMAGESEARCH_INDEX_TYPE": args.index_type}
    ours = _run_side("ours", [sys.executable, str(REPO / "run_api.py"), "--port", str(port)], ours_env, port,
                     f"/{MODEL}/search", photos, args, args.work)
    _report(naive, ours, args)
    return 0


def _report(naive: dict, ours: dict, args) -> None:
    print(f"\n{args.products} products, ViT-B/32-sized CLIP, {os.cpu_count()} CPU cores, 1000x800 JPEG queries")
    print(f"{'':8}{'p50 ms':>10}{'p95 ms':>10}{'req/s (' + str(args.clients) + ' clients)':>22}{'errors':>8}")
    for name, r in (("naive", naive), ("ours", ours)):
        print(f"{name:8}{r['p50_ms']:10.1f}{r['p95_ms']:10.1f}{r['throughput_rps']:22.1f}{r['errors']:8d}")
    result = {
        "bench": "api", "products": args.products, "clients": args.clients,
        "naive": {k: round(v, 2) for k, v in naive.items()}, "ours": {k: round(v, 2) for k, v in ours.items()},
        "p50_ratio": round(ours["p50_ms"] / naive["p50_ms"], 3),
        "p95_ratio": round(ours["p95_ms"] / naive["p95_ms"], 3),
        "throughput_ratio": round(ours["throughput_rps"] / naive["throughput_rps"], 2),
        "errors": naive["errors"] + ours["errors"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
