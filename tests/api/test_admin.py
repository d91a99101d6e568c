"""Admin routes: key checks, add/update/delete without a rebuild (persisted across a restart), reload."""

from __future__ import annotations

import io
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.api.conftest import API_KEY, start_server, stop_server
from tests.http_server import HttpServer, Reply
from tests.stores import both_stores

KEY = {"X-API-Key": API_KEY}


def _poster(seed: int) -> bytes:
    """A picture unlike anything in the demo catalogue."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (300, 260), tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x, y = (int(v) for v in rng.integers(0, 260, 2))
        draw.ellipse([x, y, x + 40, y + 40], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


@pytest.mark.parametrize("method,path", [("POST", "/general/products"), ("DELETE", "/general/products/G1001"),
                                         ("POST", "/general/reload")])
def test_admin_needs_the_key(client, method, path):
    r = client.request(method, path, json={})
    assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
    r = client.request(method, path, json={}, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401 and r.json()["error"] == "AuthError" and "not valid" in r.json()["detail"]
    r = client.request(method, path, json={}, headers={"X-API-Key": "clé-ünïcode".encode()})
    assert r.status_code in (401, 403)


def test_admin_disabled_without_a_configured_key(client, live):
    live.app.state.settings = live.settings.model_copy(update={"api_key": None})
    try:
        r = client.post("/general/reload", headers=KEY)
        assert r.status_code == 403 and "IMAGESEARCH_API_KEY" in r.json()["detail"]
    finally:
        live.app.state.settings = live.settings
    assert client.post("/general/reload", headers=KEY).status_code == 200


@pytest.fixture(scope="module")
def editable(built_root, tiny_clip, tmp_path_factory):
    """A private copy of the built catalogue (edits must not leak into other tests) and its server."""
    from core.config import load_settings

    root = tmp_path_factory.mktemp("editable")
    for sub in ("data", "models"):
        shutil.copytree(built_root / sub, root / sub)
    settings = load_settings(root=root, clip_model=str(tiny_clip), device="cpu", api_key=API_KEY,
                             download_timeout=3.0, download_retries=0)
    server = start_server(settings)
    yield server
    stop_server(server)


@pytest.fixture
def restartable(copy_built, tmp_path):
    """Like ``editable``, on this test's store, for a test that restarts the server."""
    server = start_server(copy_built(tmp_path / "restartable", ("general",), api_key=API_KEY,
                                     download_timeout=3.0, download_retries=0))
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def image_host():
    with HttpServer() as server:
        yield server


def _search_top(c, data: bytes, model: str = "general") -> dict:
    r = c.post(f"/{model}/search", files={"file": ("q.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]


def _stored(settings, model: str) -> int:
    """Products in the store, as a fresh store object (a restarted process) finds them."""
    from core.catalogue_store import open_store
    from core.model_config import ModelRegistry

    store = open_store(settings, ModelRegistry.discover(settings).get(model), open_index=False)
    try:
        return store.count()
    finally:
        store.close()


@both_stores
def test_add_update_delete_survive_a_restart(restartable, image_host):
    root = restartable.settings.root
    local, remote = _poster(1), _poster(2)
    (root / "data" / "general" / "new").mkdir()
    (root / "data" / "general" / "new" / "poster.jpg").write_bytes(local)
    image_host.routes["/remote.jpg"] = Reply(remote)
    product = {"id": "NEW-1", "title": "Dotted poster", "category": "posters",
               "images": ["new/poster.jpg", image_host.url("/missing.jpg")],
               "extra": {"price": 9.5, "vendor": "Admin"}}
    with restartable.client() as c:
        r = c.post("/general/products", json=product, headers=KEY)
        assert r.status_code == 200, r.text
        assert r.json()["num_products"] == 67 and list(r.json()["failed_images"]) == [image_host.url("/missing.jpg")]
        top = _search_top(c, local)
        assert top["id"] == "NEW-1" and top["extra"] == {"price": 9.5, "vendor": "Admin"}
        assert c.get(top["image_url"]).status_code == 200
        assert c.get("/health").json()["models"]["general"]["products"] == 67

        product.update(title="Dotted poster, framed", images=["new/poster.jpg", image_host.url("/remote.jpg")])
        assert c.post("/general/products", json=product, headers=KEY).json()["num_products"] == 67
        assert c.get("/general/products/NEW-1").json()["title"] == "Dotted poster, framed"
    assert _stored(restartable.settings, "general") == 67

    stop_server(restartable)  # a restart: everything comes back from the store
    restarted = start_server(restartable.settings)
    restartable.server, restartable.thread, restartable.url = restarted.server, restarted.thread, restarted.url
    with restartable.client() as c:
        assert c.get("/general/products/NEW-1").json()["title"] == "Dotted poster, framed"
        assert c.get("/general/products/NEW-1/similar").json()["num_results"] == 10
        r = c.delete("/general/products/NEW-1", headers=KEY)
        assert r.status_code == 200 and r.json()["num_products"] == 66
        assert c.get("/general/products/NEW-1").status_code == 404
        assert c.delete("/general/products/NEW-1", headers=KEY).status_code == 404
    assert _stored(restartable.settings, "general") == 66


def test_add_with_no_usable_image_is_400(editable, image_host):
    image_host.routes["/page.jpg"] = Reply.html()
    body = {"id": "BAD", "title": "Nothing usable", "images": [image_host.url("/page.jpg"), "../../etc/passwd",
                                                              "file:///etc/passwd"]}
    with editable.client() as c:
        r = c.post("/general/products", json=body, headers=KEY)
        assert r.status_code == 400 and "none of the product's images" in r.json()["detail"]
        assert c.get("/general/products/BAD").status_code == 404


@pytest.mark.parametrize("body", [{}, {"id": "x", "title": "t", "images": []},
                                  {"id": "a/b", "title": "t", "images": ["x.jpg"]},
                                  {"id": "x", "title": "t", "images": ["x.jpg"] * 11}])
def test_add_with_bad_body_is_422(editable, body):
    with editable.client() as c:
        assert c.post("/general/products", json=body, headers=KEY).status_code == 422


def test_admin_on_unknown_model_is_404(editable):
    with editable.client() as c:
        assert c.post("/nope/reload", headers=KEY).status_code == 404
        assert c.delete("/%C3%BC/products/x", headers=KEY).status_code == 404


def _wait_for(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "the running API did not pick up the change"
        time.sleep(0.1)
    return result


@both_stores
def test_admin_edits_survive_reruns_force_and_csv_changes_until_dropped(copy_built, tmp_path):
    """An API product lasts through a plain rerun, --force and a changed CSV; --drop-api-edits removes it.
    A CSV product deleted through the API stays deleted through a plain rerun, --force, a change to another
    row and a --force run racing more deletes, until its own CSV row changes; the summary counts the deletes
    kept. The running API picks up the pipeline's writes without a restart or a reload."""
    from core.model_config import ModelRegistry
    from pipeline.report import format_summary
    from pipeline.runner import run_model

    settings = copy_built(tmp_path / "overlay", ("general",), api_key=API_KEY)
    server = start_server(settings)
    spec = ModelRegistry.discover(settings).get("general")
    try:
        with server.client() as c:
            body = {"id": "OVERLAY", "title": "Admin only", "images": ["images/G1001_0.jpg"]}
            assert c.post("/general/products", json=body, headers=KEY).json()["num_products"] == 67
            assert c.delete("/general/products/G1002", headers=KEY).json()["num_products"] == 66
            outcomes = run_model(settings, spec, progress=False)  # the CSV did not change: only the index phase runs
            assert [o.status.value for o in outcomes] == ["skipped", "skipped", "skipped", "ran"]
            assert c.get("/general/products/G1002").status_code == 404

            racing = [f"G10{i}" for i in range(10, 18)]  # deleted while a --force run writes every CSV product
            done: list[object] = []
            runner = threading.Thread(target=lambda: done.append(run_model(settings, spec, force=True,
                                                                           progress=False)))
            runner.start()
            assert all(c.delete(f"/general/products/{pid}", headers=KEY).status_code == 200 for pid in racing)
            runner.join(240)
            outcomes = run_model(settings, spec, force=True, progress=False)
            assert done and outcomes[2].result.details["api_deletes_kept"] == 9
            assert "CSV products deleted through the API: 9 kept deleted" in format_summary(spec, settings, outcomes)
            csv = spec.paths(settings).csv
            csv.write_text(csv.read_text().replace("Red Ceramic Mug", "Scarlet Ceramic Mug"))  # G1001's row
            outcomes = run_model(settings, spec, progress=False)
            assert outcomes[2].result.details["api_kept"] == 1
            _wait_for(lambda: c.get("/general/products/G1001").json()["title"] == "Scarlet Ceramic Mug")
            for pid in ["G1002", *racing]:
                assert c.get(f"/general/products/{pid}").status_code == 404, pid
            assert c.get("/general/products/OVERLAY").status_code == 200
            _wait_for(lambda: c.get("/health").json()["models"]["general"]["products"] == 58)

            title = c.get("/general/products/G1003").json()["title"]
            g1002 = next(line for line in csv.read_text().splitlines() if line.startswith("G1002,"))
            csv.write_text(csv.read_text().replace(g1002, g1002.replace(",", ",Renamed ", 1)))  # its own row
            outcomes = run_model(settings, spec, progress=False)
            assert outcomes[2].result.details["api_deletes_kept"] == 8
            _wait_for(lambda: c.get("/general/products/G1002").status_code == 200)
            assert c.get("/general/products/G1002").json()["title"].startswith("Renamed ")
            assert c.get("/general/products/G1003").json()["title"] == title

            outcomes = run_model(settings, spec, progress=False, drop_api_edits=True)
            assert outcomes[2].result.details["api_dropped"] == 1
            _wait_for(lambda: c.get("/general/products/OVERLAY").status_code == 404)
            _wait_for(lambda: c.get("/health").json()["models"]["general"]["products"] == 66)
            assert c.get(f"/general/products/{racing[0]}").status_code == 200
    finally:
        stop_server(server)


@pytest.mark.parametrize("store", ["milvus-server"], indirect=True)
def test_an_api_replica_on_milvus_opens_no_database_of_its_own(copy_built, tmp_path, image_host):
    """An API process on a Milvus catalogue - searching, serving products and their views, an admin upsert -
    needs no local SQLite file: the build state stays with the build machine, and none is made."""
    settings = copy_built(tmp_path / "replica", ("general",), api_key=API_KEY, download_timeout=3.0,
                          download_retries=0)
    for built in settings.models_dir.glob("*/build.db*"):
        built.unlink()  # the build machine's: this replica never had it
    image_host.routes["/replica.jpg"] = Reply(_poster(5))
    server = start_server(settings)
    try:
        with server.client() as c:
            info = c.get(f"/general/products/{_search_top(c, _poster(6))['id']}").json()
            assert info["view_urls"] and all(info["view_urls"])
            assert c.get(info["view_urls"][0]).status_code == 200
            body = {"id": "REPLICA-1", "title": "Replica poster",
                    "images": [image_host.url("/replica.jpg"), image_host.url("/missing.jpg")]}
            assert c.post("/general/products", json=body, headers=KEY).status_code == 200
            added = c.get("/general/products/REPLICA-1").json()
            assert added["view_urls"][0] and added["view_urls"][1] is None
            assert c.get(added["view_urls"][0]).status_code == 200
    finally:
        stop_server(server)
    assert not list(settings.models_dir.glob("*/build.db*"))
