"""Health, model list, metrics, docs; a broken model is reported and answers 503 while others serve."""

from __future__ import annotations

import shutil

import pytest

from tests.api import images
from tests.api.conftest import start_server, stop_server
from tests.stores import both_stores


@both_stores
def test_health(client):
    body = client.get("/health").json()
    assert body["status"] == "healthy" and body["available_models"] == 2  # a count, as the seed design has it
    assert body["available_model_names"] == ["general", "shirts"]
    assert body["total_products"] == 66 + 35
    general = body["models"]["general"]
    assert general["products"] == 66 and general["index_type"] == "flat" and general["built_at"]
    assert general["backbone"] and general["name"] == "general"


@both_stores
def test_models(client):
    body = client.get("/models").json()
    assert body["count"] == 2
    general = {m["name"]: m for m in body["models"]}["general"]
    assert general["searchable"] and general["search_path"] == "/general/search"
    assert general["num_products"] == 66 and general["description"]
    assert general["state"] == "ready" and general["vector_dim"] == 32  # the tiny CLIP's width, for /search/vector
    assert general["currency"] == "USD"
    assert set(general["categories"]) == set(general["category_counts"])
    assert sum(general["category_counts"].values()) == 66


@both_stores
def test_metrics_prometheus_text(client):
    client.post("/shirts/search", files={"file": ("q.jpg", images.jpeg())})
    text = client.get("/metrics").text
    assert "# TYPE imagesearch_http_requests_total counter" in text
    assert 'imagesearch_http_requests_total{method="POST",model="shirts",route="/{model}/search",status="200"}' in text
    assert ('imagesearch_http_request_duration_seconds_bucket{le="+Inf",method="POST",model="shirts",'
            'route="/{model}/search"}') in text
    assert 'imagesearch_model_products{model="general"} 66.0' in text


def test_docs_and_openapi(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/{model}/search"]["post"]["requestBody"]["content"]
    assert {"/health", "/models", "/all/search", "/search_products/", "/metrics"} <= set(spec["paths"])


def test_unknown_route_is_json_404(client):
    r = client.get("/no/such/route/here")
    assert r.status_code == 404 and r.json()["error"] == "NotFound"


@pytest.fixture(scope="module")
def degraded(built_root, tiny_clip, tmp_path_factory):
    """A copy where shirts' index file is garbage (repairable), a copy of shirts has a garbage database
    (not repairable) and a fourth model has a CSV but was never built."""
    from core.config import load_settings

    root = tmp_path_factory.mktemp("degraded")
    shutil.copytree(built_root / "data", root / "data")
    shutil.copytree(built_root / "models", root / "models")
    for index_file in (root / "models" / "shirts").glob("index-*.faiss"):
        index_file.write_bytes(b"garbage")
    shutil.copytree(root / "data" / "shirts", root / "data" / "broken")
    shutil.copytree(built_root / "models" / "shirts", root / "models" / "broken")
    (root / "models" / "broken" / "catalogue.db").write_bytes(b"not a database" * 300)
    (root / "data" / "pending").mkdir()
    shutil.copy(built_root / "data" / "shirts" / "products.csv", root / "data" / "pending" / "products.csv")
    server = start_server(load_settings(root=root, clip_model=str(tiny_clip), device="cpu"))
    yield server
    stop_server(server)


def test_a_damaged_index_is_repaired_and_only_unusable_models_are_reported(degraded):
    with degraded.client() as c:
        health = c.get("/health").json()
        assert health["status"] == "degraded" and health["available_model_names"] == ["general", "shirts"]
        assert health["total_products"] == 66 + 35  # shirts' index was rebuilt from its store
        assert health["models"]["broken"]["state"] == "failed"
        assert "catalogue.db is damaged" in health["models"]["broken"]["error"]
        assert health["models"]["pending"]["state"] == "not built" and health["models"]["pending"]["error"] is None
        models = {m["name"]: m for m in c.get("/models").json()["models"]}
        assert not models["broken"]["searchable"] and models["shirts"]["searchable"]
        r = c.post("/broken/search", files={"file": ("q.jpg", images.jpeg())})
        assert r.status_code == 503 and "catalogue.db is damaged" in r.json()["detail"]
        assert c.get("/pending/search/text", params={"q": "shirt"}).status_code == 503
        assert c.post("/shirts/search", files={"file": ("q.jpg", images.jpeg())}).status_code == 200
        r = c.post("/all/search", files={"file": ("q.jpg", images.jpeg())})
        assert r.status_code == 200 and r.json()["per_model"]["broken"]["error"]
        assert {h["model"] for h in r.json()["results"]} <= {"general", "shirts"}


def test_a_model_never_built_is_not_a_fault(built_root, tiny_clip, tmp_path):
    """Only general built: the built-in shirts (no CSV, no build) and a dropped-in CSV never built are "not
    built", and health stays healthy."""
    from core.config import load_settings

    shutil.copytree(built_root / "data" / "general", tmp_path / "data" / "general")
    shutil.copytree(built_root / "models" / "general", tmp_path / "models" / "general")
    (tmp_path / "data" / "toys").mkdir()
    (tmp_path / "data" / "toys" / "products.csv").write_text("id,title,images\nT1,Robot,robot.jpg\n")
    server = start_server(load_settings(root=tmp_path, clip_model=str(tiny_clip), device="cpu"))
    try:
        with server.client() as c:
            health = c.get("/health").json()
            models = {m["name"]: m for m in c.get("/models").json()["models"]}
    finally:
        stop_server(server)
    assert health["status"] == "healthy" and health["available_models"] == 1
    assert {n: m["state"] for n, m in health["models"].items()} == {
        "general": "ready", "shirts": "not built", "toys": "not built"}
    assert health["models"]["shirts"]["error"] is None
    assert models["toys"]["state"] == "not built" and not models["toys"]["searchable"]


def test_redoc_needs_nothing_from_outside(client):
    """/redoc and every asset it loads come from this server: no CDN logo (a console error offline)."""
    import re

    page = client.get("/redoc")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href|spec-url)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/") for s in sources), sources
    bundle = client.get(next(s for s in sources if s.endswith(".js")))
    assert bundle.status_code == 200 and len(bundle.content) > 100_000
    assert b"cdn.redoc.ly" not in bundle.content
    assert not re.findall(rb'src:"https?://', bundle.content)  # no image from another host


def test_model_counts_are_a_snapshot_retaken_in_the_background(tmp_path, make_settings, monkeypatch):
    """/models' per-category counts scan the store (slowly, on a large Milvus collection): a stale snapshot is
    served at once while the next one is taken, so no request waits for a scan but the first."""
    import time

    import numpy as np

    from api import loaded
    from core.local_store import LocalStore
    from core.model_config import ModelSpec
    from core.store import Product, ProductVector

    store = LocalStore(tmp_path / "m", make_settings(), name="m", open_index=False)
    vectors = np.eye(4, dtype=np.float32)
    store.upsert([ProductVector(Product(id=str(i), title="t", category="a"), clip=vectors[i]) for i in range(3)])
    model = loaded.ServedModel(spec=ModelSpec(name="m"), backbone="synthetic", store=store)
    monkeypatch.setattr(loaded, "_STATS_TTL", 0.0)
    assert model.stats().categories == {"a": 3}
    store.upsert([ProductVector(Product(id="3", title="t", category="b"), clip=vectors[3])])
    time.sleep(0.05)
    assert model.stats().categories == {"a": 3}  # the snapshot, while the next one is taken
    deadline = time.monotonic() + 10
    while model.stats().categories != {"a": 3, "b": 1}:
        assert time.monotonic() < deadline
        time.sleep(0.05)
