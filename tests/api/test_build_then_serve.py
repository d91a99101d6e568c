"""The platform on Milvus end to end, in real processes: a catalogue built by run_training.py into the session's
real Milvus server is served by run_api.py started afterwards; writes by another process reach the running
API within its watcher's tick; admin edits made through the API are searchable at once and meet the next
pipeline runs as they do on the local store (tests/api/test_admin.py checks both stores in one process); a
build made elsewhere is picked up by a running API; a Milvus outage (a milvus-lite server of the test's own,
stopped and started again) is a 503 JSON error, never a 500, and serving resumes on its own when it is back."""

from __future__ import annotations

import csv
import json
import re
import time

import httpx
import numpy as np
import pytest

from core.config import load_settings
from tests.api import images
from tests.api.conftest import API_KEY, build_models, start_server, stop_server
from tests.fake_images import jpeg_bytes
from tests.processes import ApiProcess, training
from tests.stores import MilvusServer, as_env, milvus_overrides, need_pymilvus
from utils.demo_catalogue import write_demo

pytestmark = pytest.mark.slow
KEY = {"X-API-Key": API_KEY}


def _single_view(root) -> list[dict[str, str]]:
    with open(root / "data" / "general" / "products.csv", encoding="utf-8") as fh:
        return [r for r in csv.DictReader(fh) if len(json.loads(r["images"])) == 1]


def _search(c: httpx.Client, data: bytes) -> list[dict]:
    r = c.post("/general/search", params={"top_k": 5}, files={"file": ("q.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def _build(root, tiny_clip, *args: str, **env: str) -> str:
    proc = training(root, tiny_clip, *(args if "--list" in args else ("general", *args)), **env)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    return out


def _wait_for(check, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.2)


def _writes_from_another_process_are_seen(c: httpx.Client, settings) -> None:
    """This test process (not the API's) adds and removes a product: the API sees each write without a restart
    or a reload, within about a second (its watcher's tick; the test allows more on a loaded machine), and its
    searches see it from the request that first did."""
    from core.catalogue_store import open_store
    from core.model_config import ModelRegistry
    from core.store import Product, ProductVector, Source

    store = open_store(settings, ModelRegistry.discover(settings).get("general"), open_index=False)
    try:
        source = store.get(["G1003"])[0]
        vector = store.vectors(["G1003"], clip=True)[0]
        store.upsert([ProductVector(Product(id="ELSEWHERE", title="Written by another process", category="posters",
                                            images=source.images, preview_image=source.preview_image,
                                            preview_cache=source.preview_cache, source=Source.API),
                                    clip=-vector)])
        _wait_for(lambda: c.get("/general/products/ELSEWHERE").status_code == 200)
        assert c.get("/general/products/ELSEWHERE").json()["title"] == "Written by another process"
        r = c.post("/general/search/vector", json={"vector": (-vector).tolist()}, params={"top_k": 1})
        assert r.status_code == 200 and r.json()["results"][0]["id"] == "ELSEWHERE", r.text
        store.delete(["ELSEWHERE"])
        _wait_for(lambda: c.get("/general/products/ELSEWHERE").status_code == 404)
        r = c.post("/general/search/vector", json={"vector": (-vector).tolist()}, params={"top_k": 1})
        assert r.status_code == 200 and r.json()["results"][0]["id"] != "ELSEWHERE", r.text
    finally:
        store.close()


def _an_index_rebuilt_elsewhere_is_served(c: httpx.Client, settings, query: bytes, expected: str) -> None:
    """Another process rebuilds the collection's vector index as another type (writing no index.json that
    the API could notice): the running API describes and searches it as that type."""
    from core.catalogue_store import open_store
    from core.model_config import ModelRegistry
    from core.types import IndexType

    store = open_store(settings.model_copy(update={"index_type": IndexType.HNSW}),
                       ModelRegistry.discover(settings).get("general"), open_index=False)
    try:
        assert store.rebuild(save=False).kind == "hnsw"
    finally:
        store.close()
    _wait_for(lambda: c.get("/health").json()["models"]["general"]["index_type"] == "hnsw")
    assert _search(c, query)[0]["id"] == expected


def test_a_cli_build_in_milvus_is_served_and_meets_admin_edits_and_other_writers(tmp_path, tiny_clip,
                                                                                 milvus_standalone):
    root = tmp_path / "root"
    write_demo(root / "data", general_per_category=2, shirts_per_category=2)
    overrides = milvus_overrides(milvus_standalone)
    env = as_env(overrides)
    _build(root, tiny_clip, **env)
    assert not (root / "models" / "general" / "catalogue.db").exists()  # the catalogue is in Milvus
    poster = jpeg_bytes(300, 260, seed=77)
    (root / "data" / "general" / "new").mkdir()
    (root / "data" / "general" / "new" / "poster.jpg").write_bytes(poster)

    api = ApiProcess(root, tiny_clip, IMAGESEARCH_API_KEY=API_KEY, **env)
    try:
        health = api.wait_ready()
        assert health["models"]["general"]["searchable"] and health["models"]["general"]["products"] == 12
        assert health["models"]["shirts"]["state"] == "not built" and health["status"] == "healthy"
        with httpx.Client(base_url=api.url, timeout=30) as c:
            rows = _single_view(root)[:3]
            for row in rows:  # the built products, with cosine scores and calibrated matches
                top = _search(c, (root / "data" / "general" / json.loads(row["images"])[0]).read_bytes())[0]
                assert top["id"] == row["shopify_product_id"] and top["title"] == row["title"]
                assert 0.9 < top["score"] <= 1.0 + 1e-6 and 0.0 <= top["match"] <= 1.0
            settings = load_settings(root=root, **overrides)
            _writes_from_another_process_are_seen(c, settings)

            added = {"id": "ADMIN-1", "title": "Admin poster", "category": "posters", "images": ["new/poster.jpg"]}
            assert c.post("/general/products", json=added, headers=KEY).json()["num_products"] == 13
            assert _search(c, poster)[0]["id"] == "ADMIN-1"
            assert c.delete("/general/products/G1002", headers=KEY).json()["num_products"] == 12

            _build(root, tiny_clip, **env)  # the CSV did not change: its products are not written again
            assert c.get("/general/products/ADMIN-1").json()["title"] == "Admin poster"
            assert c.get("/general/products/G1002").status_code == 404

            dropped = _build(root, tiny_clip, "--drop-api-edits", **env)  # the CSV is the whole truth again
            assert "products added or changed through the API: 0 kept, 1 dropped" in dropped
            _wait_for(lambda: c.get("/general/products/ADMIN-1").status_code == 404)  # the build's writes
            assert c.get("/general/products/G1002").status_code == 200
            _wait_for(lambda: c.get("/health").json()["models"]["general"]["products"] == 12)
            listing = _build(root, tiny_clip, "--list", **env).replace("general", "", 1)  # not the model's name
            # products, and images cached (the CSV's 28 and the admin's poster, fetched by the API on this machine)
            assert re.search(r"General products\s+yes\s+12\s+29\s", listing), listing

            query = (root / "data" / "general" / json.loads(rows[0]["images"])[0]).read_bytes()
            _an_index_rebuilt_elsewhere_is_served(c, settings, query, rows[0]["shopify_product_id"])
    finally:
        api.stop()
    assert "Traceback" not in (root / "logs" / "api.log").read_text()


def test_a_build_from_elsewhere_is_picked_up_and_an_outage_is_a_503_until_milvus_is_back(tmp_path, tiny_clip):
    need_pymilvus()
    milvus = MilvusServer(tmp_path / "milvus").start()  # its own server: this one goes down
    overrides = milvus_overrides(milvus.uri)
    serving, building = tmp_path / "api", tmp_path / "builder"  # two machines: no file of the build is the API's
    for root in (serving, building):
        write_demo(root / "data", general_per_category=2, shirts_per_category=2)
    live = start_server(load_settings(root=serving, clip_model=str(tiny_clip), device="cpu", api_key=API_KEY,
                                      **overrides), watch_interval=0.2)
    query = images.jpeg()
    try:
        with live.client() as c:
            assert c.post("/general/search", files={"file": ("q.jpg", query)}).status_code == 503  # not built yet
            build_models(load_settings(root=building, clip_model=str(tiny_clip), device="cpu", torch_threads=1,
                                       **overrides), ("general",))
            _wait_for(lambda: c.post("/general/search", files={"file": ("q.jpg", query)}).status_code == 200)

            milvus.stop()
            answers = [c.post("/general/search", files={"file": ("q.jpg", query)}),
                       c.post("/all/search", files={"file": ("q.jpg", query)}),
                       c.get("/general/search/text", params={"q": "mug"}),
                       c.post("/general/search/vector", json={"vector": np.ones(live.app.state.catalogue.model(
                           "general").store.live_index.info.dim).tolist()}),
                       c.get("/general/products/G1001"), c.get("/general/products/G1001/similar"),
                       c.delete("/general/products/G1001", headers=KEY)]
            for r in answers:
                assert r.status_code == 503 and r.json()["error"] == "StoreError", (r.request.url, r.text)
                assert "Milvus" in r.json()["detail"]
            assert c.get("/health").status_code == 200  # the models are listed, without counts they cannot take
            assert c.get("/models").json()["models"][0]["name"] == "general"
            milvus.start()  # same address, same data: the API serves again without a restart
            _wait_for(lambda: c.post("/general/search", files={"file": ("q.jpg", query)}).status_code == 200)
            assert c.get("/general/products/G1001").status_code == 200
    finally:
        stop_server(live)
        milvus.stop()
