"""executor=ray on a real local Ray instance: the same catalogue, the same failures with their reasons, the
same resume after a SIGKILL as the local executor, and one clear line when Ray is not installed."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from core.catalogue_store import open_store
from core.model_config import ModelRegistry, ModelSpec
from pipeline.runner import PhaseOutcome, PhaseStatus, run_model
from tests.fake_images import huge_png, jpeg_bytes
from tests.http_server import HttpServer, Reply
from tests.processes import REPO, env, training
from utils.demo_catalogue import write_demo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """One Ray instance for the module (start-up takes seconds); the pipeline joins it in this process,
    and a subprocess driver joins it through IMAGESEARCH_RAY_ADDRESS."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    info = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                    logging_level=logging.ERROR)
    yield info.address_info["gcs_address"]
    ray.shutdown()


def _products(settings, spec: ModelSpec) -> dict[str, tuple]:
    store = open_store(settings, spec, open_index=False)
    try:
        ids = sorted(pid for (pid,) in store.db.reader().execute("SELECT id FROM products"))
        vectors = store.vectors(ids)
        return {p.id: (p.title, p.category, p.images, p.preview_cache, v)
                for p, v in zip(store.get(ids), vectors, strict=True)}
    finally:
        store.close()


def _same_catalogue(a: dict[str, tuple], b: dict[str, tuple]) -> None:
    assert sorted(a) == sorted(b)
    for pid in a:
        assert a[pid][:-1] == b[pid][:-1], pid
        assert float(np.dot(a[pid][-1], b[pid][-1])) > 0.9999, pid


def test_demo_catalogue_on_ray_matches_local_and_serves(make_settings, tmp_path, ray_address):
    from tests.api.conftest import start_server, stop_server

    local, on_ray = make_settings(root=tmp_path / "local"), make_settings(root=tmp_path / "ray", executor="ray")
    outcomes: dict[str, list[PhaseOutcome]] = {}
    for name, settings in (("local", local), ("ray", on_ray)):
        write_demo(settings.data_dir, general_per_category=3, shirts_per_category=2)
        outcomes[name] = run_model(settings, ModelRegistry.discover(settings).get("general"), progress=False)
    assert [o.status for o in outcomes["ray"]] == [PhaseStatus.RAN] * 4
    download, extraction = outcomes["ray"][1].result, outcomes["ray"][2].result
    assert download.details["executor"].startswith("ray (") and extraction.details["ray_actors"] >= 1
    assert download.details["local"] == outcomes["local"][1].result.details["local"] == 37
    assert extraction.details["embedded"] == outcomes["local"][2].result.details["embedded"]
    spec = ModelSpec(name="general")
    _same_catalogue(_products(local, spec), _products(on_ray, spec))
    assert sorted(p.name for p in (on_ray.data_dir / "general/image_cache").rglob("*.jpg")) == sorted(
        p.name for p in (local.data_dir / "general/image_cache").rglob("*.jpg"))

    server = start_server(on_ray)  # the API serves what the Ray build wrote
    try:
        with server.client() as client:
            mug = client.get("/general/products/G1002").json()  # one view: its vector is that image's
            photo = (on_ray.data_dir / "general/image_cache" / _products(on_ray, spec)["G1002"][3]).read_bytes()
            hits = client.post("/general/search", files={"file": ("mug.jpg", photo, "image/jpeg")}).json()["results"]
    finally:
        stop_server(server)
    assert mug["title"] == "Blue Travel Mug" and hits[0]["id"] == "G1002" and hits[0]["score"] > 0.999
    assert run_model(on_ray, spec, progress=False)[1].status == PhaseStatus.SKIPPED  # nothing redone


def _hostile_csv(folder: Path, url) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    (folder / "images/ok.jpg").write_bytes(jpeg_bytes(seed=40))
    (folder / "images/notes.jpg").write_text("not a picture")
    (folder / "images/big.jpg").write_bytes(os.urandom(300_000))
    rows = [
        ("1", "Good remote", f"{url('/good0.jpg')}|{url('/missing.jpg')}"),
        ("2", "Good local", f"images/ok.jpg|images/nothere.jpg|../../outside.jpg|{url('/good1.jpg')}"),
        ("3", "Guarded", f"{url('/good2.jpg', '127.0.0.1')}|http://10.0.0.1/x.jpg|http://169.254.169.254/latest|"
                         f"{url('/hop')}"),
        ("4", "Broken", f"{url('/page.jpg')}|{url('/cut.jpg')}|{url('/bomb.png')}|{url('/loop')}|{url('/large.jpg')}"),
        ("5", "Bad local", "images/notes.jpg|images/big.jpg|ftp://localhost/x.jpg|file:///etc/passwd"),
        ("6", "", url("/good3.jpg")),  # a broken row: no title
        ("", "No id", url("/good3.jpg")),
    ]
    lines = ["shopify_product_id,title,images,category"] + [f"{i},{t},{refs},c" for i, t, refs in rows]
    (folder / "products.csv").write_text("\n".join(lines) + "\n")


def _image_states(settings, spec: ModelSpec) -> dict[str, tuple]:
    conn = sqlite3.connect(spec.paths(settings).models / "catalogue.db")
    try:
        return {ref: rest for ref, *rest in conn.execute("SELECT ref, status, reason, transient, cache FROM images")}
    finally:
        conn.close()


def test_hostile_catalogue_fails_the_same_way_on_ray(make_settings, tmp_path, ray_address):
    big = jpeg_bytes(1200, 900, seed=3, quality=100)
    with HttpServer() as server:
        server.routes.update({f"/good{i}.jpg": Reply(jpeg_bytes(seed=i)) for i in range(4)})
        server.routes.update({
            "/page.jpg": Reply.html(), "/cut.jpg": Reply(big[: len(big) // 2]), "/loop": Reply.redirect("/loop"),
            "/bomb.png": Reply(huge_png(), content_type="image/png"), "/large.jpg": Reply(os.urandom(300_000)),
            "/hop": Reply.redirect(server.url("/good2.jpg", "127.0.0.1"))})
        spec, results = ModelSpec(name="shop"), {}
        for executor in ("local", "ray"):
            settings = make_settings(root=tmp_path / executor, executor=executor, allow_private_urls=False,
                                     fetch_allowlist="localhost", max_image_bytes=200_000, download_retries=0)
            _hostile_csv(spec.paths(settings).data, lambda path, host="localhost": server.url(path, host))
            results[executor] = (run_model(settings, spec, progress=False), _image_states(settings, spec),
                                 _products(settings, spec))
        assert server.count("/good2.jpg") == 0  # the guard refused 127.0.0.1, directly and as a redirect's hop
    (local, local_images, local_products), (on_ray, ray_images, ray_products) = results["local"], results["ray"]
    assert on_ray[1].result.failed == local[1].result.failed
    assert ray_images == local_images  # every ref: same status, reason, transience and cache file
    for reason, n in on_ray[1].result.failed.items():  # up to 3 examples per reason, whichever failed first
        refs = {ref for ref, (_, why, *_) in local_images.items() if why == reason}
        examples = on_ray[1].result.examples[reason]  # "row N: <ref>"
        assert len(examples) == min(n, 3) and {e.split(": ", 1)[1] for e in examples} <= refs
    failed = on_ray[1].result.failed
    for reason in ("http 404", "file not found", "too many pixels", "truncated image", "too many redirects"):
        assert failed[reason] == 1, (reason, failed)
    assert failed["address not allowed"] == 4 and failed["too large"] == 2
    assert sum(n for r, n in failed.items() if "not an image" in r) == 2
    # broken rows, refs outside the model's folder and non-http schemes never reach the download
    assert on_ray[0].result.failed == local[0].result.failed
    assert on_ray[0].result.failed["empty title"] == on_ray[0].result.failed["empty id"] == 1
    assert on_ray[0].result.details["images_rejected"] == 3
    assert on_ray[2].result.failed == local[2].result.failed == {"no usable image": 3}
    _same_catalogue(local_products, ray_products)
    assert sorted(ray_products) == ["1", "2"]


def _catalogue(folder: Path, urls: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["shopify_product_id,title,images,category"] + [f"p{i},Product {i},{u},{'ab'[i % 2]}"
                                                            for i, u in enumerate(urls)]
    (folder / "products.csv").write_text("\n".join(lines) + "\n")


def _views(root: Path) -> set[str]:
    db = root / "models/shop/catalogue.db"
    if not db.exists():
        return set()
    try:
        conn = sqlite3.connect(db, timeout=5)
        try:
            return {r for (r,) in conn.execute("SELECT cache FROM views")}
        finally:
            conn.close()
    except sqlite3.Error:
        return set()


def test_killed_ray_run_resumes_without_redoing_finished_work(make_settings, tmp_path, tiny_clip, ray_address):
    root, n, spec = tmp_path / "root", 30, ModelSpec(name="shop")  # the kill lands after 5 of the 30
    reference = make_settings(root=tmp_path / "reference")
    with HttpServer() as server:
        for i in range(n):
            server.routes[f"/img{i}.jpg"] = Reply(jpeg_bytes(seed=i))
        urls = [server.url(f"/img{i}.jpg") for i in range(n)]
        _catalogue(reference.data_dir / "shop", urls)
        run_model(reference, spec, progress=False)  # uninterrupted, local executor
        server.reset()
        _catalogue(root / "data/shop", urls)
        # joins this module's Ray; one image per batch, so the kill lands between committed batches
        proc = training(root, tiny_clip, "shop", IMAGESEARCH_EXECUTOR="ray", IMAGESEARCH_RAY_ADDRESS=ray_address,
                        IMAGESEARCH_RAY_BATCH_SIZE="1")
        deadline = time.monotonic() + 400  # a hang guard: the suite's load can slow Ray's start-up minutes
        while len(_views(root)) < 5:
            assert proc.poll() is None, f"run ended before the kill point: {proc.communicate()}"
            assert time.monotonic() < deadline, "kill point never reached"
            time.sleep(0.01)
        proc.kill()
        proc.wait(30)
        embedded = _views(root)
        assert not (root / "checkpoints/shop/feature_extraction.json").exists()
        assert server.total_requests == n

        rerun = training(root, tiny_clip, "shop", IMAGESEARCH_EXECUTOR="ray")  # starts (and stops) its own Ray
        out, err = rerun.communicate(timeout=400)
        assert rerun.returncode == 0, err
        assert server.total_requests == n  # no image fetched again
    assert re.search(r"image_download\s+skipped", out), out
    assert re.search(rf"\bembedded={n - len(embedded)}\b", out), out  # only the views not committed before the kill
    assert re.search(r"executor: ray \(local instance: \d+ CPUs", out), out
    assert not err.strip(), err  # Ray's own logging stays out of the merchant's console
    _same_catalogue(_products(reference, spec), _products(make_settings(root=root), spec))


def test_a_backbone_the_actors_cannot_load_stops_the_run_with_its_own_error(make_settings, tmp_path, ray_address):
    from core.errors import BackboneLoadError

    settings = make_settings(executor="ray", clip_model=str(tmp_path / "no_such_clip"))
    folder = settings.data_dir / "shop"
    (folder / "images").mkdir(parents=True)
    (folder / "images/a.jpg").write_bytes(jpeg_bytes(seed=1))
    (folder / "products.csv").write_text("shopify_product_id,title,images\np1,Mug,images/a.jpg\n")
    with pytest.raises(BackboneLoadError, match="no_such_clip"):
        run_model(settings, ModelSpec(name="shop"), progress=False)


def test_executor_ray_without_ray_installed_says_so_in_one_line(tmp_path, tiny_clip):
    root = tmp_path / "root"
    write_demo(root / "data", general_per_category=1, shirts_per_category=1)
    blocked = ("import runpy, sys; sys.modules['ray'] = None; sys.argv = ['run_training.py', 'general']; "
               f"runpy.run_path({str(REPO / 'run_training.py')!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", blocked], env=env(root, tiny_clip, IMAGESEARCH_EXECUTOR="ray"),
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: IMAGESEARCH_EXECUTOR=ray needs ray[data], which is not installed: pip install -r "
        "requirements-scale.txt"]
    assert not (root / "checkpoints").exists() or not any((root / "checkpoints").rglob("*.json"))
