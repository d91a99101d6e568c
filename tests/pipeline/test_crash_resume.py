"""SIGKILL mid-download and mid-extraction: the rerun redoes nothing finished and ends with the same index."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.config import PROJECT_ROOT
from tests.fake_images import jpeg_bytes
from tests.http_server import HttpServer, Reply

pytestmark = pytest.mark.slow


def _start(root: Path, tiny_clip: Path, **env) -> subprocess.Popen:
    full = {**os.environ, "IMAGESEARCH_ROOT": str(root), "IMAGESEARCH_CLIP_MODEL": str(tiny_clip),
            "IMAGESEARCH_TORCH_THREADS": "1", **env}
    return subprocess.Popen([sys.executable, str(PROJECT_ROOT / "run_training.py"), "shop", "--no-progress"],
                            env=full, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"run ended before the kill point: {proc.communicate()}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _finish(root: Path, tiny_clip: Path, **env) -> dict:
    proc = _start(root, tiny_clip, **env)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    return {c: json.loads((root / "checkpoints/shop" / f"{c}.json").read_text())
            for c in ("image_download", "feature_extraction")}


def _catalogue(root: Path, refs: list[list[str]]) -> None:
    folder = root / "data" / "shop"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["shopify_product_id,title,images,category"]
    lines += [f'p{i},Product {i},{"|".join(r)},{"ab"[i % 2]}' for i, r in enumerate(refs)]
    (folder / "products.csv").write_text("\n".join(lines) + "\n")


def _indexed_ids(root: Path) -> list[str]:
    lines = (root / "models/shop/metadata.jsonl").read_text().splitlines()
    return sorted(json.loads(line)["id"] for line in lines)


def test_kill_during_download_then_resume(tmp_path, tiny_clip):
    root = tmp_path / "root"
    with HttpServer() as server:
        for i in range(30):
            server.routes[f"/img{i}.jpg"] = Reply(jpeg_bytes(seed=i), delay=0.15)
        _catalogue(root, [[server.url(f"/img{i}.jpg")] for i in range(30)])
        markers = root / "data/shop/image_cache/refs"
        proc = _start(root, tiny_clip, IMAGESEARCH_DOWNLOAD_WORKERS="2", IMAGESEARCH_DOWNLOAD_PER_HOST="2")
        _kill_when(proc, lambda: markers.is_dir() and len(list(markers.glob("*.json"))) >= 6)
        done_before = {json.loads(p.read_text())["ref"] for p in markers.glob("*.json")}
        assert 6 <= len(done_before) < 30
        assert not (root / "checkpoints/shop/image_download.json").exists()
        checkpoints = _finish(root, tiny_clip)
        for ref in done_before:
            assert server.count(ref.removeprefix(server.url(""))) == 1, ref  # never fetched again
        assert checkpoints["image_download"]["ok"] == 30
    assert _indexed_ids(root) == sorted(f"p{i}" for i in range(30))


def test_kill_during_extraction_then_resume(tmp_path, tiny_clip):
    root = tmp_path / "root"
    images = root / "data/shop/images"
    images.mkdir(parents=True)
    for i in range(300):
        (images / f"{i}.jpg").write_bytes(jpeg_bytes(48, 48, seed=i))
    _catalogue(root, [[f"images/{i}.jpg", f"images/{(i + 1) % 300}.jpg"] for i in range(300)])
    parts = root / "checkpoints/shop/features"
    proc = _start(root, tiny_clip, IMAGESEARCH_BATCH_SIZE="1")
    _kill_when(proc, lambda: parts.is_dir() and len(list(parts.glob("*/part-*.npz"))) >= 5)
    embedded_before = len(list(parts.glob("*/part-*.npz")))  # one image per part at batch size 1
    assert not (root / "checkpoints/shop/feature_extraction.json").exists()
    details = _finish(root, tiny_clip, IMAGESEARCH_BATCH_SIZE="1")["feature_extraction"]["details"]
    images = json.loads((root / "models/shop/images.json").read_text())["images"].values()
    unique = {entry["cache"] for entry in images}  # content-addressed: identical files share one entry
    assert details["reused"] >= embedded_before and details["embedded"] + details["reused"] == len(unique)
    assert _indexed_ids(root) == sorted(f"p{i}" for i in range(300))
