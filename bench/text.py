"""Text queries at 8 concurrent clients: one text-tower pass per query (before) vs micro-batched (after).

Both paths use the API's own ``Embedder`` (one worker thread per backbone, every torch call on it):
*before* runs each query as its own call (``encode_texts([q])``, as the API did), *after* is
``Embedder.embed_text``, which batches queued texts into one forward pass. ViT-B/32-sized CLIP with
random weights (or ``IMAGESEARCH_BENCH_MODEL``). Prints both throughputs, their ratio and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import vit_b32_folder  # noqa: E402 - after the path set-up above
from core.config import load_settings  # noqa: E402

WORDS = ("red", "blue", "striped", "cotton", "polo", "mug", "ceramic", "lamp", "wooden", "toy", "linen", "shirt",
         "desk", "leather", "bag", "running", "shoe", "glass", "vase", "soft")


def queries(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 6)))) for _ in range(n)]


async def clients(fn: Callable[[str], Awaitable[np.ndarray]], texts: list[str], concurrency: int,
                  seconds: float) -> tuple[int, float]:
    """``concurrency`` clients each sending one query after another for ``seconds``; returns (done, elapsed)."""
    done = 0
    stop = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < stop:
            await fn(texts[i % len(texts)])
            done += 1
            i += concurrency

    start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(concurrency)))
    return done, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    from api.embedder import Embedder

    folder = vit_b32_folder(Path(tempfile.gettempdir()) / "imagesearch-bench-vitb32")
    settings = load_settings(clip_model=str(folder), device="cpu")
    embedder = Embedder.load(settings, str(folder))
    texts = queries(500)
    try:
        async def before(q: str) -> np.ndarray:
            return np.asarray((await embedder.batcher.run(embedder.encoder.encode_texts, [q]))[0])

        async def run() -> dict[str, float]:
            await clients(embedder.embed_text, texts, args.clients, 1.0)  # warm-up
            out = {}
            for name, fn in (("before", before), ("after", embedder.embed_text)):
                batches = embedder.batcher.batches
                done, elapsed = await clients(fn, texts, args.clients, args.seconds)
                out[name] = done / elapsed
                out[f"{name}_batches"] = embedder.batcher.batches - batches
                out[f"{name}_queries"] = done
            return out

        result = asyncio.run(run())
    finally:
        embedder.stop()
    ratio = result["after"] / result["before"]
    print(f"{args.clients} text clients, {args.seconds:.0f} s each")
    print(f"before (one pass per query):   {result['before']:.1f} queries/s")
    print(f"after  (micro-batched):        {result['after']:.1f} queries/s "
          f"(mean batch {result['after_queries'] / max(1, result['after_batches']):.1f})")
    print(f"throughput ratio {ratio:.2f}x")
    print(json.dumps({"benchmark": "text", "clients": args.clients, "before_qps": round(result["before"], 2),
                      "after_qps": round(result["after"], 2), "ratio": round(ratio, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
