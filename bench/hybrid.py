"""Hybrid text search on a synthetic catalogue: exact words (SKU, brand + model) found by words and pictures
fused vs the CLIP text tower alone.

    python bench/hybrid.py [--products 100000] [--queries 300] [--work DIR]

The catalogue: ``--products`` products whose titles hold a brand, a model and a SKU token drawn from a seeded
vocabulary (plus a noun and a colour), with clustered synthetic vectors (no CLIP runs on images) of the tiny
CLIP's width; the queries go through the tiny CLIP's text tower (``python -m utils.tiny_clip``). Reported:

* quality, in process (``api.ranking.by_words``, the API's own step): P@1 and recall@10 of SKU queries and of
  brand + model queries, hybrid (both fusions: a blend of matches, the default, and reciprocal-rank fusion)
  vs semantic-only;
* latency over HTTP (run_api.py, a real uvicorn on 127.0.0.1): hybrid, lexical and semantic p50/p99, and
  hybrid p50 for common words (a noun, a colour and a noun: thousands of products hold them);
* the lexical index's size and build time (one SQL statement over the rows) vs the vector index's build.

Ends with one JSON line. The machine is shared: quote medians and the load (``uptime``) printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._scale_data import Synthetic  # noqa: E402 - after the path set-up above
from bench._scale_http import API_KEY, free_port, start_api  # noqa: E402

MODEL = "hybrid"
_SYLLABLES = ("ka", "lo", "mi", "ra", "ve", "zu", "to", "ni", "sa", "qu", "dor", "lin", "mar", "pex", "vol", "tes")
NOUNS = ("jacket", "mug", "lamp", "shoe", "backpack", "watch", "chair", "kettle", "drill", "helmet", "scarf", "vase")
COLOURS = ("red", "blue", "green", "black", "white", "grey", "orange", "navy", "olive", "beige")


class Vocabulary:
    """Seeded brands, models and SKUs: product ``i``'s title and columns are a pure function of ``i``."""

    def __init__(self, n: int, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        brands: list[str] = []
        while len(brands) < 400:
            word = "".join(rng.choice(_SYLLABLES, size=3)).capitalize()
            if word not in brands:
                brands.append(word)
        self.brands = brands
        self.brand = rng.integers(0, len(brands), n)
        self.model = rng.integers(100, 100_000, n)  # brand x model: 40M combinations, about unique at 1M
        self.noun = rng.integers(0, len(NOUNS), n)
        self.colour = rng.integers(0, len(COLOURS), n)

    def sku(self, i: int) -> str:
        return f"{self.brands[self.brand[i]][:3].upper()}-{i:07d}"

    def brand_model(self, i: int) -> str:
        return f"{self.brands[self.brand[i]]} M{self.model[i]}"

    def title(self, i: int) -> str:
        return f"{self.brand_model(i)} {COLOURS[self.colour[i]]} {NOUNS[self.noun[i]]} {self.sku(i)}"


def product_id(i: int) -> str:
    return f"P{i:08d}"


def build(root: Path, clip: Path, n: int, dim: int, vocab: Vocabulary) -> dict[str, Any]:
    """The store with every product (the lexical index kept by the writes' triggers), then the lexical index
    rebuilt alone and the vector index built, each timed."""
    from core.config import load_settings
    from core.lexical import rebuild as rebuild_lexical
    from core.local_store import LocalStore
    from core.store import Product, ProductVector

    settings = load_settings(root=root, clip_model=str(clip), device="cpu")
    store = LocalStore(settings.models_dir / MODEL, settings, name=MODEL, open_index=False)
    start = time.perf_counter()
    for first, vectors in Synthetic(n, dim).chunks():
        store.upsert([ProductVector(Product(id=product_id(i), title=vocab.title(i), category=NOUNS[vocab.noun[i]],
                                            extra={"sku": vocab.sku(i), "price": float(10 + i % 90)}), clip=v)
                      for i, v in zip(range(first, first + len(vectors)), vectors, strict=True)])
    upsert_s = time.perf_counter() - start
    start = time.perf_counter()
    with store.db.write() as conn:
        rebuild_lexical(conn, store.lexical_config)
    lexical_s = time.perf_counter() - start
    start = time.perf_counter()
    live = store.rebuild(save=True)
    vector_s = time.perf_counter() - start
    size = store.lexical_bytes()
    store.close()
    return {"upsert_all_s": round(upsert_s, 2), "lexical_build_s": round(lexical_s, 2),
            "vector_build_s": round(vector_s, 2), "index_type": live.kind.value, "lexical_index_bytes": size,
            "build_ratio": round(lexical_s / vector_s, 4)}


def queries(vocab: Vocabulary, n: int, count: int, seed: int = 3) -> list[tuple[str, str, int]]:
    """(kind, text, the product it was made from): a SKU and a brand + model query per sampled product."""
    picks = np.random.default_rng(seed).choice(n, size=count, replace=False)
    return [q for i in picks for q in (("sku", vocab.sku(int(i)), int(i)), ("brand_model", vocab.brand_model(int(i)),
                                                                            int(i)))]


def relevant(vocab: Vocabulary, kind: str, i: int, hit: dict[str, Any] | str) -> bool:
    """A hit answers the query when it is the product, or (brand + model) another with the same two words."""
    pid = hit if isinstance(hit, str) else hit["id"]
    j = int(pid[1:])
    return j == i or (kind == "brand_model" and vocab.brand_model(j) == vocab.brand_model(i))


def scores(vocab: Vocabulary, asked: list[tuple[str, str, int]], found: list[list[str]]) -> dict[str, float]:
    """P@1 and recall@10 (the product itself in the top 10) per query kind."""
    out: dict[str, float] = {}
    for kind in ("sku", "brand_model"):
        rows = [(i, ids) for (k, _, i), ids in zip(asked, found, strict=True) if k == kind]
        out[f"{kind}_p_at_1"] = round(sum(bool(ids) and relevant(vocab, kind, i, ids[0]) for i, ids in rows)
                                      / len(rows), 4)
        out[f"{kind}_recall_at_10"] = round(sum(product_id(i) in ids[:10] for i, ids in rows) / len(rows), 4)
    return out


def in_process(root: Path, clip: Path, asked: list[tuple[str, str, int]], vocab: Vocabulary) -> dict[str, Any]:
    """Quality per fusion and semantic-only, through the API's own search step."""
    from api.embedder import Embedder
    from api.loaded import load_model
    from api.ranking import Filters, Fusion, TextMode, by_words, query_vector
    from core.calibration import TEXT
    from core.config import load_settings
    from core.model_config import ModelRegistry

    settings = load_settings(root=root, clip_model=str(clip), device="cpu")
    embedder = Embedder.load(settings, str(clip))
    model = load_model(settings, ModelRegistry.discover(settings).get(MODEL), encoder_dim=None)
    vectors = embedder.encoder.encode_texts([t for _, t, _ in asked])
    filters = Filters(kind=TEXT)
    out: dict[str, Any] = {}
    try:
        runs: tuple[tuple[str, TextMode, Fusion], ...] = (("blend", "hybrid", "blend"), ("rrf", "hybrid", "rrf"),
                                                          ("semantic", "semantic", "blend"))
        for name, mode, fusion in runs:
            found = [[f.product.id for f in by_words(model, query_vector(model, v), text, mode, filters, fusion=fusion)]
                     for (_, text, _), v in zip(asked, vectors, strict=True)]
            out[name] = scores(vocab, asked, found)
    finally:
        model.require().close()
    return out


def over_http(env: dict[str, str], asked: list[tuple[str, str, int]], vocab: Vocabulary,
              log: Path) -> dict[str, Any]:
    """Each query per mode through run_api.py: latency percentiles, and the hybrid answers' quality."""
    port = free_port()
    proc, ready_s = start_api(REPO, env, port, MODEL, log)
    out: dict[str, Any] = {"api_ready_s": round(ready_s, 1)}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for _, text, _ in asked[:100]:  # warm-up
                client.get(f"/{MODEL}/search/text", params={"q": text})
            modes = ("hybrid", "lexical", "semantic")
            times: dict[str, list[float]] = {m: [] for m in modes}
            found: dict[str, list[list[str]]] = {m: [] for m in modes}
            for _, text, _ in asked:  # the modes take turns: the machine's noise falls on each alike
                for mode in modes:
                    t = time.perf_counter()
                    r = client.get(f"/{MODEL}/search/text", params={"q": text, "mode": mode, "top_k": 10})
                    times[mode].append(time.perf_counter() - t)
                    r.raise_for_status()
                    found[mode].append([h["id"] for h in r.json()["results"]])
            for mode in modes:
                ms = sorted(1000 * s for s in times[mode])
                out[mode] = {"p50_ms": round(statistics.median(ms), 2),
                             "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2),
                             **scores(vocab, asked, found[mode])}
            common: list[float] = []  # words thousands of products hold: "mug", "red mug" (no answer to check)
            for text in [*NOUNS, *(f"{c} {n}" for c in COLOURS for n in NOUNS[:4])] * 2:
                t = time.perf_counter()
                client.get(f"/{MODEL}/search/text", params={"q": text, "top_k": 10}).raise_for_status()
                common.append(1000 * (time.perf_counter() - t))
            out["common_words_hybrid_p50_ms"] = round(statistics.median(common), 2)
    finally:
        proc.terminate()
        proc.wait(30)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300, help="sampled products (a SKU and a brand+model "
                                                                 "query each)")
    parser.add_argument("--dim", type=int, default=32, help="the tiny CLIP's projection width")
    parser.add_argument("--work", type=Path, default=None, help="folder for the catalogue (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-hybrid-") as tmp:
        work = args.work or Path(tmp)
        root, clip = work / "root", work / "tiny_clip"
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-m", "utils.tiny_clip", str(clip), "--dim", str(args.dim)], cwd=REPO,
                       check=True, stdout=subprocess.DEVNULL, env=env)
        (root / "data" / MODEL).mkdir(parents=True, exist_ok=True)
        (root / "data" / MODEL / "products.csv").write_text("id,title,category,images,sku,price\n", encoding="utf-8")
        vocab = Vocabulary(args.products)
        built = build(root, clip, args.products, args.dim, vocab)
        print(f"built {args.products} products: {built}", flush=True)
        asked = queries(vocab, args.products, args.queries)
        quality = in_process(root, clip, asked, vocab)
        print(f"quality in process: {quality}", flush=True)
        env.update(IMAGESEARCH_ROOT=str(root), IMAGESEARCH_CLIP_MODEL=str(clip), IMAGESEARCH_DEVICE="cpu",
                   IMAGESEARCH_API_KEY=API_KEY)
        http = over_http(env, asked, vocab, work / "api.log")
        print(f"over HTTP: {http}", flush=True)
    load = os.getloadavg()
    print(f"machine load (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    result = {"products": args.products, "queries": len(asked),
              "sku_p_at_1": http["hybrid"]["sku_p_at_1"], "brand_model_p_at_1": http["hybrid"]["brand_model_p_at_1"],
              "sku_recall_at_10": http["hybrid"]["sku_recall_at_10"],
              "brand_model_recall_at_10": http["hybrid"]["brand_model_recall_at_10"],
              "semantic_sku_p_at_1": http["semantic"]["sku_p_at_1"],
              "semantic_brand_model_p_at_1": http["semantic"]["brand_model_p_at_1"],
              "rrf_brand_model_p_at_1": quality["rrf"]["brand_model_p_at_1"],
              "blend_brand_model_p_at_1": quality["blend"]["brand_model_p_at_1"],
              "rrf_sku_p_at_1": quality["rrf"]["sku_p_at_1"],
              "hybrid_p50_ms": http["hybrid"]["p50_ms"], "hybrid_p99_ms": http["hybrid"]["p99_ms"],
              "lexical_p50_ms": http["lexical"]["p50_ms"], "lexical_p99_ms": http["lexical"]["p99_ms"],
              "semantic_p50_ms": http["semantic"]["p50_ms"],
              "common_words_hybrid_p50_ms": http["common_words_hybrid_p50_ms"],
              "lexical_index_bytes": built["lexical_index_bytes"], "lexical_build_s": built["lexical_build_s"],
              "vector_build_s": built["vector_build_s"], "lexical_to_vector_build": built["build_ratio"],
              "load_1min": round(load[0], 2)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
