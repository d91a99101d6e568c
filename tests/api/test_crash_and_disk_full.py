"""SIGKILL the API at seeded random moments while admin edits stream in: after each restart every model
serves and every acknowledged edit is there. A full disk (a small tmpfs) during an edit is a 507 with a
clear message, during a build one clear line; either way what was built keeps serving."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api import images
from tests.api.conftest import API_KEY, start_server, stop_server
from tests.fake_images import jpeg_bytes
from tests.processes import ApiProcess, training

KEY = {"X-API-Key": API_KEY}
KILLS = 4  # each round starts run_api.py afresh (15-20 s under the suite's load); CI runs it every landing


def _copy(built_root: Path, root: Path) -> Path:
    for sub in ("data", "models", "checkpoints"):
        shutil.copytree(built_root / sub, root / sub)
    return root


def _editor(url: str, round_: int, acked: dict[str, bool], stop: threading.Event) -> None:
    """Add products (and delete every third one) until stopped; record what the API acknowledged. A request
    cut off by the kill may or may not have been applied: its product is dropped from the record."""
    refs = [f"images/G10{i:02d}_0.jpg" for i in range(1, 40)]
    with httpx.Client(base_url=url, timeout=30, headers=KEY) as c:
        for i in range(10_000):
            if stop.is_set():
                return
            pid = f"R{round_}-{i}"
            gone = f"R{round_}-{i - 1}" if i % 3 == 2 else None
            try:
                r = c.post("/general/products", json={"id": pid, "title": f"Edit {pid}", "images": [refs[i % 39]]})
                if r.status_code == 200:
                    acked[pid] = True
                if gone is not None and c.delete(f"/general/products/{gone}").status_code == 200:
                    acked[gone] = False
            except httpx.HTTPError:  # killed mid-request: that edit's outcome is unknown
                acked.pop(pid, None)
                if gone is not None:
                    acked.pop(gone, None)
                return


@pytest.mark.slow
def test_random_kills_during_admin_edits_lose_no_acknowledged_edit(built_root, tiny_clip, tmp_path):
    root = _copy(built_root, tmp_path / "root")
    rng = random.Random(11)
    acked: dict[str, bool] = {}
    for round_ in range(KILLS):
        api = ApiProcess(root, tiny_clip, IMAGESEARCH_API_KEY=API_KEY, IMAGESEARCH_ALLOW_PRIVATE_URLS="1")
        try:
            health = api.wait_ready()
            assert health["status"] == "healthy", health  # every model serves after the previous kill
            _assert_edits(api.url, acked)
            stop = threading.Event()
            editor = threading.Thread(target=_editor, args=(api.url, round_, acked, stop))
            editor.start()
            time.sleep(rng.uniform(0.3, 2.5))
            api.kill()
            stop.set()
            editor.join(30)
        finally:
            api.kill()
    api = ApiProcess(root, tiny_clip, IMAGESEARCH_API_KEY=API_KEY)
    try:
        assert api.wait_ready()["status"] == "healthy"
        _assert_edits(api.url, acked)
        assert sum(acked.values()) >= KILLS  # the rounds did edit
    finally:
        api.stop()


def _assert_edits(url: str, acked: dict[str, bool]) -> None:
    with httpx.Client(base_url=url, timeout=30) as c:
        for pid, present in acked.items():
            status = c.get(f"/general/products/{pid}").status_code
            assert status == (200 if present else 404), (pid, present, status)


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 48 MB tmpfs; skipped, saying why, where one cannot be mounted."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"no tmpfs can be mounted here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path, leave: int = 0) -> Path:
    """Fill the disk holding ``folder``, but for about ``leave`` bytes."""
    filler = folder / "filler.bin"
    with open(filler, "wb") as fh:
        try:
            if leave:
                st = os.statvfs(folder)
                fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
            while not leave:
                fh.write(b"\0" * (1 << 20))
                fh.flush()
        except OSError:
            pass
    return filler


@pytest.mark.slow
def test_a_full_disk_is_a_clear_error_and_the_previous_state_keeps_serving(built_root, tiny_clip, small_disk):
    from core.config import load_settings

    root = small_disk / "root"
    for sub in ("data", "models"):
        shutil.copytree(built_root / sub, root / sub, ignore=shutil.ignore_patterns("shirts"))
    settings = load_settings(root=root, clip_model=str(tiny_clip), device="cpu", api_key=API_KEY)
    server = start_server(settings)
    (root / "data" / "general" / "new").mkdir()
    (root / "data" / "general" / "new" / "a.jpg").write_bytes(jpeg_bytes(seed=77))
    body = {"id": "FULL-1", "title": "Written to a full disk", "images": ["new/a.jpg"]}
    try:
        with server.client() as c:
            filler = _fill(small_disk)
            r = c.post("/general/products", json=body, headers=KEY)
            assert r.status_code == 507, r.text
            assert "disk" in r.json()["detail"] and "full" in r.json()["detail"]
            assert r.json()["error"] == "StorageFullError"
            assert c.post("/general/search", files={"file": ("q.jpg", images.jpeg())}).status_code == 200
            assert c.get("/general/products/FULL-1").status_code == 404

            csv = root / "data" / "general" / "products.csv"
            csv.write_text(csv.read_text() + "G9999,Full disk mug,new/a.jpg,,mugs,1.00,Demo Co\n")
            build = training(root, tiny_clip, "general")
            out, err = build.communicate(timeout=240)
            lines = [line for line in err.splitlines() if line.strip()]
            assert build.returncode == 1 and len(lines) == 1 and "full" in lines[0], err
            assert c.post("/general/search", files={"file": ("q.jpg", images.jpeg())}).status_code == 200
            assert c.get("/health").json()["models"]["general"]["searchable"]

            filler.unlink()  # space again: the same edit and the same build go through
            assert c.post("/general/products", json=body, headers=KEY).status_code == 200
            build = training(root, tiny_clip, "general")
            assert build.wait(240) == 0
            assert c.get("/general/products/G9999").status_code == 200
    finally:
        stop_server(server)


@pytest.mark.slow
def test_an_api_started_on_a_full_disk_serves_read_only_until_there_is_room(built_root, tiny_clip, small_disk):
    """Every file under the root sits on a full disk when the API starts: the intact catalogue is served
    (SQLite opened read-only), an edit is a 507 saying so, and once there is room edits go through."""
    from core.config import load_settings

    root = small_disk / "root"
    for sub in ("data", "models", "checkpoints"):
        shutil.copytree(built_root / sub, root / sub, ignore=shutil.ignore_patterns("shirts"))
    (root / "data" / "general" / "new").mkdir()
    (root / "data" / "general" / "new" / "a.jpg").write_bytes(jpeg_bytes(seed=78))
    filler = _fill(small_disk)
    server = start_server(load_settings(root=root, clip_model=str(tiny_clip), device="cpu", api_key=API_KEY))
    body = {"id": "ROOM-1", "title": "Written once there is room", "images": ["new/a.jpg"]}
    try:
        with server.client() as c:
            health = c.get("/health").json()["models"]["general"]
            assert health["searchable"] and health["products"] == 66 and health["error"] is None, health
            assert c.post("/general/search", files={"file": ("q.jpg", images.jpeg())}).status_code == 200
            assert c.get("/general/products/G1001").json()["title"] == "Red Ceramic Mug"
            r = c.post("/general/products", json=body, headers=KEY)
            assert r.status_code == 507 and "full" in r.json()["detail"], r.text
            filler.unlink()
            assert c.post("/general/products", json=body, headers=KEY).status_code == 200
            assert c.get("/general/products/ROOM-1").status_code == 200
    finally:
        stop_server(server)


@pytest.mark.slow
def test_a_full_disk_during_the_index_write_fails_the_phase_and_the_next_run_repairs_it(built_root, tiny_clip,
                                                                                          small_disk):
    """The disk fills while the index file is written (FAISS itself only prints a close error): the build
    stops with one line, the previous index stays named and loadable; after freeing space the same command
    writes it. An index file cut short by an earlier release makes a plain rerun run the phase again."""
    from core.ann import LiveIndex
    from utils.atomic import read_json

    root = small_disk / "root"
    for sub in ("data", "models", "checkpoints"):
        shutil.copytree(built_root / sub, root / sub, ignore=shutil.ignore_patterns("shirts"))
    models = root / "models" / "general"
    before = read_json(models / "index.json")
    hnsw = {"IMAGESEARCH_INDEX_TYPE": "hnsw", "IMAGESEARCH_HNSW_M": "256"}  # an index file of about 145 KB
    filler = _fill(small_disk, leave=112 * 1024)
    build = training(root, tiny_clip, "general", **hnsw)
    out, err = build.communicate(timeout=240)
    lines = [line for line in err.splitlines() if line.strip()]
    assert build.returncode == 1 and len(lines) == 1 and "full" in lines[0] and "index" in lines[0], err
    assert "index ready" not in out
    assert read_json(models / "index.json") == before and LiveIndex.load(models).ntotal == 66
    assert not list(models.glob(".index-*.tmp"))

    filler.unlink()
    build = training(root, tiny_clip, "general", **hnsw)
    out, _ = build.communicate(timeout=240)
    info = read_json(models / "index.json")
    assert build.returncode == 0 and "index ready" in out and info["kind"] == "hnsw"
    assert (models / info["file"]).stat().st_size == info["bytes"] > 100_000

    with open(models / info["file"], "r+b") as fh:  # what a close error used to leave behind
        fh.truncate(info["bytes"] // 2)
    build = training(root, tiny_clip, "general", **hnsw)
    out, _ = build.communicate(timeout=240)
    assert build.returncode == 0 and re.search(r"index_building\s+ran", out), out
    assert LiveIndex.load(models).ntotal == 66
