"""Hot reload: the pipeline's writes are picked up while searches keep succeeding (both stores); a damaged
index file is repaired and a damaged database keeps the old index serving (the local store's files)."""

from __future__ import annotations

import csv
import threading
import time

import httpx
import pytest

from tests.api import images
from tests.api.conftest import API_KEY, build_models, start_server, stop_server
from tests.stores import both_stores


@pytest.fixture
def reloadable(copy_built, tmp_path):
    server = start_server(copy_built(tmp_path / "reload_root", api_key=API_KEY), watch_interval=0.2)
    yield server
    stop_server(server)


def _hammer(url: str, stop: threading.Event, outcomes: list) -> None:
    with httpx.Client(base_url=url, timeout=30) as c:
        while not stop.is_set():
            r = c.post("/shirts/search", params={"top_k": 50}, files={"file": ("q.jpg", images.jpeg())})
            outcomes.append((r.status_code, r.json().get("num_results")))


def _drop_csv_rows(csv_path, keep: int) -> None:
    with open(csv_path, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:keep])


def _wait_for(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@both_stores
def test_pipeline_rebuild_is_swapped_in_without_failed_searches(reloadable):
    stop, outcomes = threading.Event(), []
    threads = [threading.Thread(target=_hammer, args=(reloadable.url, stop, outcomes)) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        assert _wait_for(lambda: len(outcomes) >= 3)  # searches are running before the pipeline writes
        _drop_csv_rows(reloadable.settings.data_dir / "shirts" / "products.csv", keep=20)
        build_models(reloadable.settings, ("shirts",))
        with reloadable.client() as c:
            assert _wait_for(lambda: c.get("/health").json()["models"]["shirts"]["products"] == 20)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    statuses = {s for s, _ in outcomes}
    assert statuses == {200}, statuses
    assert {n for _, n in outcomes} == {35, 20}  # every search saw one whole catalogue, old or new


def test_a_damaged_index_is_rebuilt_from_the_store_and_a_damaged_store_keeps_the_old_one(reloadable):
    """Local store only: its FAISS index file and SQLite database are what get damaged."""
    models = reloadable.settings.models_dir / "shirts"
    with reloadable.client() as c:
        for index_file in models.glob("index-*.faiss"):
            index_file.write_bytes(b"not an index")
        r = c.post("/shirts/reload", headers={"X-API-Key": API_KEY})
        assert r.status_code == 200 and r.json()["num_products"] == 35  # repaired from the stored vectors
        assert c.post("/shirts/search", files={"file": ("q.jpg", images.jpeg())}).status_code == 200

        garbage = models / "garbage.db"
        garbage.write_bytes(b"this is not a database" * 100)
        garbage.replace(models / "catalogue.db")  # the serving process keeps its open file
        r = c.post("/shirts/reload", headers={"X-API-Key": API_KEY})
        assert r.status_code == 503 and "still serving the previous index" in r.json()["detail"]
        time.sleep(1.0)
        assert c.post("/shirts/search", files={"file": ("q.jpg", images.jpeg())}).status_code == 200
        assert c.get("/health").json()["models"]["shirts"]["searchable"]


@both_stores
def test_reload_route(client):
    r = client.post("/general/reload", headers={"X-API-Key": API_KEY})
    assert r.status_code == 200 and r.json()["num_products"] == 66 and r.json()["index_type"] == "flat"
