"""Where refining words move a photo query (``q``, ``not``, ``text_weight`` on ``/<model>/search``), per weight.

The demo catalogue is built with the tiny CLIP (or the CLIP in ``IMAGESEARCH_BENCH_MODEL``, real weights) and
served in-process. The direction of a phrase is what it finds on its own: the text search's top 10. For each
single-photo product (every ``--stride``-th) and each phrase, it compares the photo alone with the photo plus
``q`` and with the photo plus ``not``: how many ranks those 10 rise and sink (medians), in how many cases they
moved the right way, how much of the photo's own top 10 stays, and how often the photo's product is still first.
Then the cost of the words, side by side in one process: a 1000x800 JPEG embedded alone (the baseline) and with
``q`` and ``not`` (ViT-B/32-sized random CLIP, or ``IMAGESEARCH_BENCH_MODEL``), medians and their ratio. Ends with
one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import photo_jpegs, vit_b32_folder  # noqa: E402 - after the path set-up above
from core.config import load_settings  # noqa: E402

PHRASES = ("red", "blue lamp", "green backpack", "white sneaker", "yellow mug")
WEIGHTS = (0.1, 0.3, 0.5, 1.0)
DEPTH = 66  # the demo's general catalogue: every product's rank is seen


def _build(root: Path, clip: Path) -> None:
    from core.model_config import ModelRegistry
    from pipeline.runner import run_model
    from utils.demo_catalogue import write_demo

    write_demo(root / "data")
    settings = load_settings(root=root, clip_model=str(clip), device="cpu")
    run_model(settings, ModelRegistry.discover(settings).get("general"), progress=False)


def _mean_rank(order: list[str], ids: list[str]) -> float:
    return statistics.mean(order.index(i) if i in order else DEPTH for i in ids)


def _figures(client, photos: list[tuple[str, bytes]], weight: float) -> dict[str, float]:
    def ids(data: bytes, **params: object) -> list[str]:
        r = client.post("/general/search", params={"top_k": DEPTH, "dedupe": "false", **params},
                        files={"file": ("q.jpg", data)})
        r.raise_for_status()
        return [h["id"] for h in r.json()["results"]]

    up, down, kept, first = [], [], [], []
    for pid, data in photos:
        alone = ids(data)
        for phrase in PHRASES:
            found = client.get("/general/search/text", params={"q": phrase, "top_k": 10, "dedupe": "false"}).json()
            wanted = [h["id"] for h in found["results"]]
            toward, away = ids(data, q=phrase, text_weight=weight), ids(data, text_weight=weight, **{"not": phrase})
            up.append(_mean_rank(alone, wanted) - _mean_rank(toward, wanted))
            down.append(_mean_rank(away, wanted) - _mean_rank(alone, wanted))
            kept.append(len(set(alone[:10]) & set(toward[:10])) / 10)
            first.append(toward[0] == pid)
    return {"rise_ranks_p50": round(statistics.median(up), 1), "rose_share": round(sum(u > 0 for u in up) / len(up), 3),
            "sink_ranks_p50": round(statistics.median(down), 1),
            "sank_share": round(sum(d > 0 for d in down) / len(down), 3),
            "photo_top10_kept": round(statistics.mean(kept), 3), "photo_still_first": round(statistics.mean(first), 3)}


def _latency(repeats: int) -> dict[str, float]:
    """Median ms of a photo query's embedding alone and with words (the API's own Embedder and steps)."""
    from api.embedder import Embedder, embed_query_image
    from api.ranking import Words
    from api.searching import refined
    from utils.images import ShapePolicy

    folder = vit_b32_folder(Path(tempfile.gettempdir()) / "imagesearch-bench-vitb32")
    embedder = Embedder.load(load_settings(clip_model=str(folder), device="cpu"), str(folder))
    with tempfile.TemporaryDirectory(prefix="bench-image-text-jpegs-") as tmp:
        photos = [p.read_bytes() for p in photo_jpegs(Path(tmp), 8)]
    words = Words("red canvas", "leather")
    times: dict[str, list[float]] = {"photo": [], "photo_words": []}

    async def one(data: bytes, refine: Words | None) -> None:
        await refined(embed_query_image(data, [embedder], policy=ShapePolicy()), {embedder.backbone: embedder}, refine)

    async def run() -> None:
        for i in range(repeats + 2):
            for name, refine in (("photo", None), ("photo_words", words)):  # alternated: load hits both alike
                start = time.perf_counter()
                await one(photos[i % len(photos)], refine)
                if i >= 2:  # two warm-up rounds
                    times[name].append((time.perf_counter() - start) * 1000)

    try:
        asyncio.run(run())
    finally:
        embedder.stop()
    photo, both = statistics.median(times["photo"]), statistics.median(times["photo_words"])
    return {"photo_ms_p50": round(photo, 2), "photo_words_ms_p50": round(both, 2), "ratio": round(both / photo, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stride", type=int, default=4, help="every n-th single-photo product is a query")
    parser.add_argument("--repeats", type=int, default=30, help="timed photo queries, each way")
    args = parser.parse_args(argv)
    from fastapi.testclient import TestClient

    from api.app import create_app
    from utils.tiny_clip import write_tiny_clip

    with tempfile.TemporaryDirectory(prefix="bench-image-text-") as tmp:
        root = Path(tmp)
        clip = Path(os.environ.get("IMAGESEARCH_BENCH_MODEL") or write_tiny_clip(root / "clip"))
        _build(root, clip)
        with (root / "data/general/products.csv").open(newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if len(json.loads(r["images"])) == 1][::args.stride]
        photos = [(r["shopify_product_id"], (root / "data/general" / r["preview_image"]).read_bytes()) for r in rows]
        app = create_app(load_settings(root=root, clip_model=str(clip), device="cpu"))
        with TestClient(app) as client:
            figures = {str(w): _figures(client, photos, w) for w in WEIGHTS}
    for weight, row in figures.items():
        print(f"text_weight {weight}: {row}")
    cost = _latency(args.repeats)
    print(f"embedding a photo: {cost['photo_ms_p50']} ms alone, {cost['photo_words_ms_p50']} ms with q and not "
          f"(p50, ratio {cost['ratio']}x)")
    print(json.dumps({"benchmark": "image_text", "photos": len(photos), "phrases": len(PHRASES), "catalogue": DEPTH,
                      "weights": figures, **cost}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
