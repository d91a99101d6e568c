"""Benchmark: the catalogue store at scale, built and served by the real code.

    python bench/scale.py --products 1000000 [--dim 512] [--store local|milvus] [--milvus-uri URI] [--index-type T]
        [--keep DIR]

1. Build: N synthetic products (about 1,000 gaussian clusters of unit vectors, 1,000 categories, a
   price column), generated chunk by chunk and written through ``LocalStore.upsert`` in batches of
   20,000, then ``rebuild(save=True)`` (index type by size, tuned to the recall target). Runs in its
   own process: its time and peak RSS (ru_maxrss) are the build's; index bytes = index-*.faiss.
2. Store edits: one-product ``LocalStore.upsert`` / ``delete`` calls in another process (the issue's
   50 ms target counts an edit after its images are fetched and embedded).
3. Serve: ``run_api.py`` on a free 127.0.0.1 port with a tiny CLIP whose projection is ``--dim`` wide (so
   the API's RSS is the store's): start-up time until /health says the model is searchable, VmRSS after
   warm-up; over HTTP vector-search p50/p99, filtered (one category, 0.1%) p50, admin upsert (fetch a
   local JPEG + embed + commit) and delete p50/p99; recall@10 of the HTTP results against exact search.

``--store milvus`` runs the same steps against a Milvus collection that the build process, the store-edits
process and the API all reach through IMAGESEARCH_MILVUS_URI, as replicas share a Milvus standalone or
cluster: a milvus-lite gRPC server started on a free 127.0.0.1 port (its data under the work folder), or with
``--milvus-uri`` a server that runs already (a Milvus standalone or cluster; IMAGESEARCH_MILVUS_TOKEN and the
other IMAGESEARCH_* settings of this shell reach every step). The run's collections get a prefix of their own
(IMAGESEARCH_MILVUS_PREFIX, else a new ``bench_<id>_``) and are dropped at the end unless ``--keep``. The
server holds the data, so its RSS is reported (after the build, while serving, and its peak: of the process
listening on the URI's port on this machine, or ``--milvus-pid``'s) and, for milvus-lite, the data folder's
size stands for the index file (``data_bytes``).

Prints a table and ends with one JSON line. ``--keep DIR`` keeps (and on a later run reuses) the built store.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from bench._common import photo_jpegs  # noqa: E402
from bench._scale_data import Synthetic  # noqa: E402
from bench._scale_http import (  # noqa: E402
    API_KEY, edits, free_port, recall_at_10, rss_mb, searches, start_api, stored_ids_ok)
from bench._scale_milvus import MilvusServer, OutsideMilvus, dir_bytes, drop_collections  # noqa: E402
from bench._scale_store import percentiles  # noqa: E402

MODEL = "scale"
IMAGE = "upsert.jpg"
# Upper bounds; recall_at_10 >= 0.95 is the one lower bound. The edit targets count from after the images
# are fetched and embedded (the wording): the store-level calls and the API's commit_ms. The
# HTTP upsert (upsert_p50_ms) includes fetching and embedding the image and is reported, not judged.
TARGETS: dict[str, float] = {
    "api_rss_mb": 3072, "build_peak_rss_mb": 4096, "delete_p50_ms": 50, "upsert_commit_p50_ms": 50,
    "delete_commit_p50_ms": 50, "store_upsert_p50_ms": 50, "store_delete_p50_ms": 50, "search_p50_ms": 15,
    "filtered_p50_ms": 15, "build_s": 900}
# On a Milvus server (issue 19): search p50 <= 30 ms at 100k x 512 and <= 50 ms at 1M, an admin edit <= 100 ms.
MILVUS_TARGETS: dict[str, float] = {"delete_p50_ms": 100, "upsert_commit_p50_ms": 100, "delete_commit_p50_ms": 100,
                  "store_upsert_p50_ms": 100, "store_delete_p50_ms": 100}
# Past 1M on one box (issue 19's 10M asks): serving RSS <= 8 GB, a 0.1% filter <= 50 ms, a database smaller per
# product than the previous release's 2.9 KB; recall@10 >= 0.95 as everywhere. No build-time target is asked there.
LARGE_TARGETS: dict[str, float] = {
    **{k: v for k, v in TARGETS.items() if k not in ("build_s", "build_peak_rss_mb")},
    "api_rss_mb": 8192, "filtered_p50_ms": 50, "db_bytes_per_product": 2900}
Server = MilvusServer | OutsideMilvus


def _env(root: Path, clip: Path, store: str, index_type: str) -> dict[str, str]:
    """This shell's environment (IMAGESEARCH_* included: a token, the consistency level, index settings) with
    the bench's own root, CLIP, device, API key and store."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), IMAGESEARCH_ROOT=str(root), IMAGESEARCH_CLIP_MODEL=str(clip),
               IMAGESEARCH_DEVICE="cpu", IMAGESEARCH_API_KEY=API_KEY, IMAGESEARCH_STORE=store,
               IMAGESEARCH_INDEX_TYPE=index_type)
    return env


def _mb(value: float) -> float:
    return round(value, 1)


def milvus_figures(server: Server | None, when: str) -> dict[str, Any]:
    """The server's RSS now and its peak so far, and its data folder's size, under ``when``'s names (what is
    known: an outside server's process may be elsewhere, its data folder is not the bench's)."""
    if server is None:
        return {}
    rss = server.rss()
    found: dict[str, Any] = {}
    if rss is not None:
        found.update({f"milvus_rss_{when}_mb": _mb(rss["VmRSS"]), f"milvus_peak_rss_{when}_mb": _mb(rss["VmHWM"])})
    if server.data_dir is not None:
        found[f"data_bytes_{when}"] = dir_bytes(server.data_dir)
    return found


def _worker(step: str, args: argparse.Namespace, env: dict[str, str], *extra: str) -> dict[str, Any]:
    """Run one bench/_scale_store.py step in its own process; its last stdout line is JSON."""
    log = args.work / f"{step}.log"
    cmd = [sys.executable, "-m", "bench._scale_store", step, "--root", str(args.work / "root"), "--model", MODEL,
           "--products", str(args.products), "--dim", str(args.dim), *extra]
    print(f"{step}: running (log {log})...", flush=True)
    with open(log, "wb") as err:
        done = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=err, check=False)
    if done.returncode:
        raise RuntimeError(f"{step} failed with {done.returncode}; see {log}")
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def prepare(args: argparse.Namespace) -> tuple[Path, dict[str, str]]:
    """The tiny CLIP (projection = --dim), data/<m>/ with a one-line products.csv (so the registry finds
    the model) and the JPEG the admin upserts use."""
    clip = args.work / f"tiny_clip_{args.dim}"
    if not (clip / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "utils.tiny_clip", str(clip), "--dim", str(args.dim)], cwd=REPO,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    data = args.work / "root" / "data" / MODEL
    data.mkdir(parents=True, exist_ok=True)
    (data / "products.csv").write_text("id,title,category,images,price\n", encoding="utf-8")
    if not (data / IMAGE).is_file():
        photo_jpegs(data, 1, size=(320, 240))[0].rename(data / IMAGE)
    return clip, _env(args.work / "root", clip, args.store, args.index_type)


def build(args: argparse.Namespace, env: dict[str, str], server: Server | None) -> dict[str, Any]:
    """Build the store, or reuse the one a previous --keep run built for the same size and store."""
    stamp = args.work / "build.json"
    if stamp.is_file():
        old: dict[str, Any] = json.loads(stamp.read_text())
        if (old.get("products"), old.get("dim"), old.get("store", "local")) == (args.products, args.dim, args.store):
            print(f"build: reusing the store built by an earlier run ({stamp})", flush=True)
            return {**old, "build_reused": True}
        raise SystemExit(f"{args.work} holds a store of another size or kind: pass another --keep folder")
    result = {"products": args.products, "dim": args.dim, "store": args.store, **_worker("build", args, env),
              **milvus_figures(server, "build")}
    stamp.write_text(json.dumps(result))
    return result


def serve(args: argparse.Namespace, env: dict[str, str], syn: Synthetic, server: Server | None
          ) -> dict[str, Any]:
    """Start the API, measure over HTTP, stop it."""
    print("queries: exact top-10 by numpy over every vector...", flush=True)
    sources, queries = syn.queries(args.queries)
    truth = syn.exact_top(queries[: args.recall_queries])
    port = free_port()
    print("api: starting...", flush=True)
    extra = dict(item.split("=", 1) for item in args.api_env)
    proc, start_s = start_api(REPO, {**env, **extra}, port, MODEL, args.work / "api.log")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            searches(client, MODEL, queries[:20])  # warm-up (index pages, code paths)
            searches(client, MODEL, queries[:5], sources[:5])
            edits(client, MODEL, 2, IMAGE, prefix="warm")
            rss = rss_mb(proc.pid)
            serving = milvus_figures(server, "serving")
            print("api: searching...", flush=True)
            plain, found = searches(client, MODEL, queries)
            filtered, _ = searches(client, MODEL, queries[: args.filtered], sources[: args.filtered])
            print("api: editing...", flush=True)
            edited = edits(client, MODEL, args.edits, IMAGE)
        after = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    if not stored_ids_ok(found, syn.n):
        raise RuntimeError("the API returned ids that are not synthetic products")
    s, f, u, d = percentiles(plain), percentiles(filtered), percentiles(edited["upsert"]), percentiles(edited["delete"])
    return {"api_start_s": round(start_s, 2), "api_rss_mb": round(rss["VmRSS"], 1),
            "api_rss_end_mb": round(after["VmRSS"], 1), "api_peak_rss_mb": round(after["VmHWM"], 1),
            "search_p50_ms": s["p50_ms"], "search_p99_ms": s["p99_ms"], "filtered_p50_ms": f["p50_ms"],
            "filtered_p99_ms": f["p99_ms"], "upsert_p50_ms": u["p50_ms"], "upsert_p99_ms": u["p99_ms"],
            "delete_p50_ms": d["p50_ms"], "delete_p99_ms": d["p99_ms"],
            "upsert_server_p50_ms": percentiles(edited["upsert_server"])["p50_ms"],
            "delete_server_p50_ms": percentiles(edited["delete_server"])["p50_ms"],
            "upsert_commit_p50_ms": percentiles(edited["upsert_commit"])["p50_ms"],
            "upsert_commit_p99_ms": percentiles(edited["upsert_commit"])["p99_ms"],
            "delete_commit_p50_ms": percentiles(edited["delete_commit"])["p50_ms"],
            "delete_commit_p99_ms": percentiles(edited["delete_commit"])["p99_ms"],
            "recall_at_10": round(recall_at_10(found, truth), 4), "recall_queries": len(truth),
            **{k: v for k, v in serving.items() if not k.startswith("data_bytes")}}


def _targets(result: dict[str, Any]) -> dict[str, float]:
    if result.get("store") != "milvus":
        return TARGETS if result["products"] <= 1_000_000 else LARGE_TARGETS
    search = 30 if result["products"] <= 100_000 else 50
    return {**MILVUS_TARGETS, "search_p50_ms": search, "filtered_p50_ms": search}


def _verdict(key: str, value: Any, targets: dict[str, float]) -> str:
    if key == "recall_at_10":
        return "ok" if value >= 0.95 else "MISS (>= 0.95)"
    if key in targets and isinstance(value, int | float):
        return "ok" if value <= targets[key] else f"MISS (<= {targets[key]})"
    return ""


def report(result: dict[str, Any]) -> None:
    print(f"\n{result['products']:,} products x {result['dim']} dims, {result['index_type']} index "
          f"{result.get('index_params')}, {os.cpu_count()} CPU cores (load average at start "
          f"{result['load_average']})")
    for key, value in result.items():
        if key in ("index_params", "load_average", "products", "dim", "index_type"):
            continue
        print(f"  {key:24}{value!s:>14}  {_verdict(key, value, _targets(result))}")
    print(json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--store", choices=["local", "milvus"], default="local",
                        help="local (SQLite + FAISS) or milvus (one Milvus server shared by every step: a milvus-lite "
                             "gRPC server started for the run, or --milvus-uri's)")
    parser.add_argument("--milvus-uri", default="", metavar="URI",
                        help="a Milvus server that runs already (http://host:19530; implies --store milvus); the "
                             "run's collections are dropped at the end unless --keep")
    parser.add_argument("--milvus-pid", type=int, default=None,
                        help="the server's process, for its RSS (default: the one listening on the URI's port here)")
    parser.add_argument("--keep", type=Path, default=None, help="work folder kept after the run (and reused)")
    parser.add_argument("--index-type", default="auto", choices=["auto", "flat", "hnsw", "ivf", "ivfsq", "ivfpq"],
                        help="IMAGESEARCH_INDEX_TYPE for every step (default auto: the type the size calls for)")
    parser.add_argument("--queries", type=int, default=300, help="vector searches over HTTP")
    parser.add_argument("--recall-queries", type=int, default=200, help="of those, how many score recall@10")
    parser.add_argument("--filtered", type=int, default=100, help="category-filtered searches over HTTP")
    parser.add_argument("--edits", type=int, default=50, help="admin upserts (then deletes) over HTTP")
    parser.add_argument("--store-edits", type=int, default=100, help="store-level upserts (then deletes)")
    parser.add_argument("--api-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the API process, e.g. OMP_WAIT_POLICY=PASSIVE (repeatable)")
    args = parser.parse_args(argv)
    if args.milvus_uri:
        args.store = "milvus"
    args.work = args.keep or Path(tempfile.mkdtemp(prefix="imagesearch-scale-"))
    args.work.mkdir(parents=True, exist_ok=True)
    load = round(os.getloadavg()[0], 2)
    started = time.perf_counter()
    server = _server(args)
    prefix = _prefix(args.work)
    try:
        _, env = prepare(args)
        if server is not None:
            print(f"milvus: {'reaching ' + server.uri if args.milvus_uri else 'starting a milvus-lite server'}...",
                  flush=True)
            server.start()
            env.update(IMAGESEARCH_MILVUS_URI=server.uri, IMAGESEARCH_MILVUS_PREFIX=prefix)
        built = build(args, env, server)
        store_ops = _worker("ops", args, env, "--edits", str(args.store_edits))
        served = serve(args, env, Synthetic(args.products, args.dim), server)
        ended = milvus_figures(server, "end")
    finally:
        if server is not None:
            server.stop()
        if args.keep is None:
            if args.milvus_uri:
                drop_collections(args.milvus_uri, os.environ.get("IMAGESEARCH_MILVUS_TOKEN", ""), prefix)
            shutil.rmtree(args.work, ignore_errors=True)
    result = {"bench": "scale", **built, **store_ops, **served, **ended, "load_average": load,
              "bench_s": round(time.perf_counter() - started, 1)}
    if args.milvus_uri:
        result["milvus_uri"] = re.sub(r"//[^/@]*@", "//", args.milvus_uri)
    report(result)
    return 0


def _server(args: argparse.Namespace) -> Server | None:
    if args.milvus_uri:
        return OutsideMilvus(args.milvus_uri, args.milvus_pid)
    if args.store == "milvus":
        return MilvusServer(args.work / "milvus", args.work / "milvus.log")
    return None


def _prefix(work: Path) -> str:
    """The run's collection prefix: IMAGESEARCH_MILVUS_PREFIX, else one of its own (kept with --keep's folder, so
    a later run finds the collections it built)."""
    if os.environ.get("IMAGESEARCH_MILVUS_PREFIX"):
        return os.environ["IMAGESEARCH_MILVUS_PREFIX"]
    saved = work / "milvus_prefix"
    if not saved.is_file():
        saved.write_text(f"bench_{uuid.uuid4().hex[:8]}_")
    return saved.read_text().strip()


if __name__ == "__main__":
    sys.exit(main())
