"""SIGKILL the pipeline at seeded random moments in every phase: after each kill the model still
serves what was built before, the store opens, and a plain rerun ends with the same products as a
run that was never interrupted. A kill mid-download or mid-extraction redoes nothing finished."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest

from core.config import load_settings
from core.local_store import LocalStore
from core.store import Filter
from tests.fake_images import jpeg_bytes
from tests.http_server import HttpServer, Reply
from tests.processes import training

pytestmark = pytest.mark.slow

KILLS = 5  # two CSV editions (kills 0 and 3 start one), each phase killed in; CI runs it every landing


def _catalogue(root: Path, refs: list[list[str]], titles: str = "Product") -> None:
    folder = root / "data" / "shop"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["shopify_product_id,title,images,category,price"]
    lines += [f'p{i},{titles} {i},{"|".join(r)},{"ab"[i % 2]},{i}.5' for i, r in enumerate(refs)]
    (folder / "products.csv").write_text("\n".join(lines) + "\n")


def _local_images(root: Path, n: int) -> list[list[str]]:
    images = root / "data/shop/images"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (images / f"{i}.jpg").write_bytes(jpeg_bytes(48, 48, seed=i))
    return [[f"images/{i}.jpg", f"images/{(i + 1) % n}.jpg"] for i in range(n)]


def _finish(root: Path, tiny_clip: Path, *args: str, **env: str) -> str:
    proc = training(root, tiny_clip, "shop", *args, **env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


def _products(root: Path, tiny_clip: Path) -> dict[str, tuple[str, str]]:
    store = LocalStore(root / "models/shop", load_settings(root=root, clip_model=str(tiny_clip)), open_index=False)
    try:
        rows = store.db.reader().execute("SELECT id, title, category FROM products").fetchall()
        return {pid: (title, cat) for pid, title, cat in rows}
    finally:
        store.close()


def _serves(root: Path, tiny_clip: Path) -> int:
    """Open the store as the API would; a built catalogue must search (index repaired if need be)."""
    store = LocalStore(root / "models/shop", load_settings(root=root, clip_model=str(tiny_clip)))
    try:
        if not store.count():
            return 0
        probe = store.vectors([store.get([pid])[0].id for (pid,) in
                               store.db.reader().execute("SELECT id FROM products LIMIT 1")])
        hits = store.search(probe, 3)[0]
        assert hits and hits[0].score > 0.99
        assert store.search(probe, 3, Filter(category="a"))[0] is not None
        return store.count()
    finally:
        store.close()


def test_random_kills_in_every_phase_then_a_plain_rerun_matches_an_uninterrupted_run(tmp_path, tiny_clip):
    rng = random.Random(7)
    reference, root = tmp_path / "reference", tmp_path / "root"
    with HttpServer() as server:
        for i in range(20):
            server.routes[f"/img{i}.jpg"] = Reply(jpeg_bytes(seed=100 + i), delay=0.05)
        remote = [[server.url(f"/img{i}.jpg")] for i in range(20)]
        for folder in (reference, root):
            _catalogue(folder, _local_images(folder, 80) + remote)
        start = time.monotonic()
        _finish(reference, tiny_clip)
        full = time.monotonic() - start
        _finish(root, tiny_clip)
        built = _serves(root, tiny_clip)
        for kill in range(KILLS):
            # every few kills the merchant edits the CSV, so each phase has work to be killed in
            if kill % 3 == 0:
                titles = f"Edition {kill}"
                for folder in (reference, root):
                    _catalogue(folder, _local_images(folder, 80 + kill) + remote, titles=titles)
                _finish(reference, tiny_clip)
            proc = training(root, tiny_clip, "shop")
            time.sleep(rng.uniform(0.5, full))
            proc.kill()
            proc.wait(30)
            assert _serves(root, tiny_clip) >= min(built, 1), f"kill {kill}: the model stopped serving"
        _finish(root, tiny_clip)
    assert _products(root, tiny_clip) == _products(reference, tiny_clip)
    assert _serves(root, tiny_clip) == len(_products(reference, tiny_clip))


def test_kill_during_download_redoes_no_finished_image(tmp_path, tiny_clip):
    root = tmp_path / "root"
    with HttpServer() as server:
        for i in range(30):
            server.routes[f"/img{i}.jpg"] = Reply(jpeg_bytes(seed=i), delay=0.15)
        _catalogue(root, [[server.url(f"/img{i}.jpg")] for i in range(30)])
        proc = training(root, tiny_clip, "shop", IMAGESEARCH_DOWNLOAD_WORKERS="2", IMAGESEARCH_DOWNLOAD_PER_HOST="2")
        done_before = _kill_when(proc, lambda: _recorded(root, "SELECT ref FROM images WHERE status='ok'"), 6)
        assert not (root / "checkpoints/shop/image_download.json").exists()
        _finish(root, tiny_clip)
        for ref in done_before:
            assert server.count(ref.removeprefix(server.url(""))) == 1, ref  # never fetched again
    assert sorted(_products(root, tiny_clip)) == sorted(f"p{i}" for i in range(30))


def test_kill_during_extraction_redoes_no_finished_batch(tmp_path, tiny_clip):
    root = tmp_path / "root"
    _catalogue(root, _local_images(root, 300))
    proc = training(root, tiny_clip, "shop", IMAGESEARCH_BATCH_SIZE="1")
    embedded = _kill_when(proc, lambda: _recorded(root, "SELECT cache FROM views"), 5)
    assert not (root / "checkpoints/shop/feature_extraction.json").exists()
    out = _finish(root, tiny_clip, IMAGESEARCH_BATCH_SIZE="1")
    distinct = _recorded(root, "SELECT cache FROM views")  # content-addressed: identical images share one
    assert embedded < distinct
    assert re.search(rf"\bembedded={len(distinct - embedded)}\b", out), out
    assert sorted(_products(root, tiny_clip)) == sorted(f"p{i}" for i in range(300))


def _recorded(root: Path, sql: str) -> set[str]:
    import sqlite3

    db = root / "models/shop/catalogue.db"
    if not db.exists():
        return set()
    try:  # read-write, as after a crash only a writable connection can recover the WAL's index
        conn = sqlite3.connect(db, timeout=5)
        try:
            return {r for (r,) in conn.execute(sql)}
        finally:
            conn.close()
    except sqlite3.Error:
        return set()


def _kill_when(proc, done, at_least: int, timeout: float = 120) -> set[str]:
    deadline = time.monotonic() + timeout
    while len(done()) < at_least:
        assert proc.poll() is None, f"run ended before the kill point: {proc.communicate()}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    finished = done()
    assert at_least <= len(finished)
    return finished
