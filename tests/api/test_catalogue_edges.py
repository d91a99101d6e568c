"""Catalogues at their edges, built by the real pipeline and served by a real uvicorn: one product (then two,
then three), and a damaged catalogue.db (found by the check on open, or by the first read that meets it)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time

import pytest

from core.model_config import ModelRegistry
from pipeline.runner import PhaseStatus, run_model
from tests.api import images
from tests.api.conftest import API_KEY, start_server, stop_server
from tests.fake_images import jpeg_bytes
from tests.processes import training

pytestmark = pytest.mark.slow


def _wait_for(check, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.2)


def _catalogue(settings, rows: int) -> None:
    folder = settings.data_dir / "tiny"
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = ["id,title,images,category"]
    for i in range(rows):
        (folder / "img" / f"{i}.jpg").write_bytes(jpeg_bytes(seed=300 + i))
        lines.append(f"T{i},Thing {i},img/{i}.jpg,{'ab'[i % 2]}")
    (folder / "products.csv").write_text("\n".join(lines) + "\n")


def test_a_catalogue_of_one_product_builds_and_serves_and_grows(make_settings):
    settings = make_settings(api_key=API_KEY)
    _catalogue(settings, 1)
    spec = ModelRegistry.discover(settings).get("tiny")
    assert [o.status for o in run_model(settings, spec, progress=False)] == [PhaseStatus.RAN] * 4
    server = start_server(settings)
    try:
        with server.client() as c:
            assert c.get("/health").json()["models"]["tiny"]["products"] == 1
            hits = c.post("/tiny/search", files={"file": ("q.jpg", images.jpeg())}).json()["results"]
            assert [h["id"] for h in hits] == ["T0"]
            for rows in (2, 3):
                _catalogue(settings, rows)
                run_model(settings, spec, progress=False)
                _wait_for(lambda rows=rows: c.get("/health").json()["models"]["tiny"]["products"] == rows)
                r = c.post("/tiny/search", files={"file": ("q.jpg", images.jpeg())})
                assert r.status_code == 200 and len(r.json()["results"]) == rows, r.text
    finally:
        stop_server(server)


def _damage(db) -> None:
    """Overwrite the root page of the products table: the file opens, its other tables read, products do not."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name='products'").fetchone()[0]
    conn.close()
    with open(db, "r+b") as fh:
        fh.seek((root - 1) * page_size)
        fh.write(bytes(range(256)) * (page_size // 256))


@pytest.mark.parametrize("found", ["on open", "on read"])
def test_a_damaged_catalogue_is_reported_in_health_and_in_one_cli_line(built_root, tiny_clip, tmp_path,
                                                                       monkeypatch, found):
    from core.config import load_settings

    root = tmp_path / "root"
    for sub in ("data", "models", "checkpoints"):
        shutil.copytree(built_root / sub, root / sub, ignore=shutil.ignore_patterns("shirts"))
    _damage(root / "models" / "general" / "catalogue.db")
    if found == "on read":  # a file too large to check on open: the first read that meets the damage says so
        monkeypatch.setattr("core.sqlite_db.QUICK_CHECK_MAX_BYTES", 0)
    server = start_server(load_settings(root=root, clip_model=str(tiny_clip), device="cpu", api_key=API_KEY))
    try:
        with server.client() as c:
            statuses = {c.get(f"/general/products/G10{i:02d}").status_code for i in range(1, 10)}
            assert statuses == {503}
            r = c.post("/general/search", files={"file": ("q.jpg", images.jpeg())})
            assert r.status_code == 503 and "damaged" in r.json()["detail"], r.text
            health = c.get("/health").json()["models"]["general"]
            assert not health["searchable"] and "catalogue.db is damaged" in health["error"], health
            assert "restore it from a backup" in health["error"]
    finally:
        stop_server(server)
    build = training(root, tiny_clip, "general")
    out, err = build.communicate(timeout=240)
    lines = [line for line in err.splitlines() if line.strip()]
    assert build.returncode == 1 and len(lines) == 1 and "damaged" in lines[0] and "run_training.py" in lines[0], err
    assert json.loads((root / "models" / "general" / "index.json").read_text())["count"] == 66  # left as it was
