"""Benchmark: building one catalogue with IMAGESEARCH_EXECUTOR=local vs ray on this machine.

Photo-like JPEGs (1000x800) are served from 127.0.0.1; each repeat runs ``run_training.py`` from
scratch (fresh store, checkpoints and image cache) with a ViT-B/32-sized CLIP, alternating the two
executors. Ray's runs start their own local instance and shut it down, as a merchant's would. Prints the
median wall time and the download and extraction phases' seconds for each, the ratio, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import photo_jpegs, vit_b32_folder  # noqa: E402

PHASES = ("image_download", "feature_extraction", "index_building")


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        pass


def _serve(folder: Path) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _build(root: Path, model_dir: Path, executor: str) -> dict[str, float]:
    for folder in (root / "models", root / "checkpoints", root / "data/bench/image_cache"):
        shutil.rmtree(folder, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESEARCH_")}
    env.update(IMAGESEARCH_ROOT=str(root), IMAGESEARCH_CLIP_MODEL=str(model_dir), IMAGESEARCH_EXECUTOR=executor,
               IMAGESEARCH_FETCH_ALLOWLIST="127.0.0.1/32", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / "run_training.py"), "bench", "--no-progress"], env=env,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{executor} build failed: {done.stderr[-2000:]}")
    seconds = {p: float(m.group(1)) for p in PHASES
               if (m := re.search(rf"^{p}\s+\w+\s+\d+\s+\d+\s+([\d.]+)$", done.stdout, re.M))}
    return {"wall": wall, **seconds}


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_dir = vit_b32_folder(tmp / "vit-b32")
        files = photo_jpegs(tmp / "served", args.images)
        server = _serve(tmp / "served")
        root = tmp / "root"
        (root / "data/bench").mkdir(parents=True)
        lines = ["shopify_product_id,title,images,category"]
        lines += [f"p{i},Photo {i},http://127.0.0.1:{server.server_address[1]}/{f.name},c{i % 5}"
                  for i, f in enumerate(files)]
        (root / "data/bench/products.csv").write_text("\n".join(lines) + "\n")
        runs: dict[str, list[dict[str, float]]] = {"local": [], "ray": []}
        for _ in range(args.repeats):
            for executor in runs:
                runs[executor].append(_build(root, model_dir, executor))
        server.shutdown()
    local, ray = _median(runs["local"]), _median(runs["ray"])
    for name, m in (("local", local), ("ray", ray)):
        print(f"{name:5}  wall {m['wall']:6.1f} s  download {m.get('image_download', 0):6.1f} s  "
              f"extraction {m.get('feature_extraction', 0):6.1f} s  index {m.get('index_building', 0):5.1f} s")
    print(f"ray / local wall time: {ray['wall'] / local['wall']:.2f}x ({os.cpu_count()} CPUs, {args.images} images, "
          f"median of {args.repeats})")
    print(json.dumps({"benchmark": "ray_executor", "images": args.images, "repeats": args.repeats,
                      "cpus": os.cpu_count(), "local": local, "ray": ray,
                      "ratio_wall": round(ray["wall"] / local["wall"], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
