"""The whole pipeline with the tiny CLIP: demo catalogue (into the local store, Milvus as the default embedded
milvus-lite file, and the session's real Milvus server), bad input over HTTP, resuming and the CLIs (into the
local store; tests/api/test_build_then_serve.py runs the CLI into the real Milvus server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from core.catalogue_store import open_store
from core.config import PROJECT_ROOT
from core.model_config import ModelRegistry, ModelSpec
from core.store import Product
from pipeline.base import PipelineContext
from pipeline.extraction import model_key
from pipeline.runner import PhaseStatus, run_model
from tests.fake_images import huge_png, jpeg_bytes
from tests.http_server import HttpServer, Reply
from tests.stores import milvus_overrides, need_pymilvus
from utils.demo_catalogue import write_demo

pytestmark = pytest.mark.slow


def _write_csv(folder, rows: list[tuple[str, str, list[str], str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["shopify_product_id,title,images,category"]
    for pid, title, images, category in rows:
        lines.append(f'{pid},{title},"{json.dumps(images).replace(chr(34), chr(34) * 2)}",{category}')
    (folder / "products.csv").write_text("\n".join(lines) + "\n")


def _products(settings, spec) -> dict[str, Product]:
    store = open_store(settings, spec, open_index=False)
    try:
        ids = [pid for batch, _ in store.scan_vectors() for pid in batch]
        return {p.id: p for p in store.get(ids)}
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["local", "milvus-file", "milvus-server"])
def test_demo_catalogue_builds_searches_and_skips_when_unchanged(request, make_settings, kind):
    overrides: dict[str, str] = {}
    if kind == "milvus-file":
        need_pymilvus()
        overrides = {"store": "milvus"}  # models/milvus.db
    elif kind == "milvus-server":
        overrides = milvus_overrides(request.getfixturevalue("milvus_standalone"))
    settings = make_settings(**overrides)
    write_demo(settings.data_dir, general_per_category=3, shirts_per_category=2)
    spec = ModelRegistry.discover(settings).get("general")
    outcomes = run_model(settings, spec, progress=False)
    assert [o.status for o in outcomes] == [PhaseStatus.RAN] * 4
    milvus_file = settings.models_dir / "milvus.db"
    assert milvus_file.exists() if kind == "milvus-file" else not milvus_file.exists()
    info = json.loads((spec.paths(settings).models / "index.json").read_text())
    assert info["count"] == 18 and info["kind"] == "flat" and info["generation"] >= 1
    # each product's own first view finds that product first
    ctx = PipelineContext(settings=settings, spec=spec, progress=False)
    store, state = ctx.store(), ctx.state()
    store.open_index()
    staged = [p for chunk in state.staged() for p in chunk]
    views = state.view_vectors([p.images[0] for p in staged], model_key(ctx))
    hits = sum(store.search(views[p.images[0]][1][None], 1)[0][0].product.id == p.id for p in staged)
    assert hits >= 16  # multi-view products are averaged, so a single view may rank a twin first
    mug = store.get(["G1001"])[0]
    assert mug.extra["price"] and mug.preview_cache and mug.category == "mugs" and mug.title == "Red Ceramic Mug"
    ctx.close()

    again = run_model(settings, spec, progress=False)
    assert [o.status for o in again] == [PhaseStatus.SKIPPED] * 4
    csv = spec.paths(settings).csv
    csv.write_text(csv.read_text().replace("Red Ceramic Mug", "Crimson Ceramic Mug"))
    changed = run_model(settings, spec, progress=False)
    assert changed[0].status == PhaseStatus.RAN and changed[2].result.details["embedded"] == 0
    assert changed[2].result.ok == 1  # only the renamed product was written again
    assert _products(settings, spec)["G1001"].title == "Crimson Ceramic Mug"
    forced = run_model(settings, spec, force=True, progress=False)
    assert all(o.status == PhaseStatus.RAN for o in forced)
    assert len(_products(settings, spec)) == 18


def _truncated_jpeg() -> bytes:
    data = jpeg_bytes(400, 300, seed=5)
    return data[: len(data) * 2 // 3]


def test_bad_urls_are_reported_and_every_good_product_is_indexed(make_settings):
    settings = make_settings(download_timeout=0.5, download_retries=1)
    with HttpServer() as server:
        good = {f"/good{i}.jpg": Reply(jpeg_bytes(seed=i)) for i in range(4)}
        server.routes.update(good)
        server.routes.update({
            "/slow.jpg": Reply(jpeg_bytes(seed=9), delay=3), "/page.jpg": Reply.html(),
            "/cut.jpg": Reply(_truncated_jpeg()), "/bomb.png": Reply(huge_png(), content_type="image/png"),
            "/loop": Reply.redirect("/loop"),
        })
        url = server.url
        spec = ModelSpec(name="shop")
        _write_csv(spec.paths(settings).data, [
            ("1", "Good one", [url("/good0.jpg"), url("/missing.jpg")], "a"),
            ("2", "Good two", [url("/good1.jpg")], "a"),
            ("3", "Good three", [url("/good2.jpg"), url("/good3.jpg")], "b"),
            ("4", "Only broken", [url("/page.jpg"), url("/cut.jpg"), url("/bomb.png"), url("/loop"),
                                  url("/slow.jpg")], "b"),
            ("5", "Bad schemes", ["file:///etc/passwd", "ftp://127.0.0.1/x.jpg"], "b"),
        ])
        outcomes = run_model(settings, spec, progress=False)
    download, extraction = outcomes[1].result, outcomes[2].result
    assert download.ok == 4
    assert {"http 404", "too many redirects"} <= set(download.failed)
    assert sum(n for r, n in download.failed.items() if "not an image" in r) == 1
    assert download.failed["truncated image"] == 1 and download.failed["too many pixels"] == 1
    assert not download.complete or "timeout" not in download.failed  # a timeout leaves the phase to retry
    assert outcomes[0].result.failed["no usable image"] == 1 and extraction.failed["no usable image"] == 1
    report = json.loads((spec.paths(settings).models / "download_report.json").read_text())
    assert report["failed"]["http 404"] == 1 and report["examples"]["http 404"] == [f"row 2: {url('/missing.jpg')}"]
    assert sorted(_products(settings, spec)) == ["1", "2", "3"]


def _cli(args: list[str], root, tiny_clip, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "IMAGESEARCH_ROOT": str(root), "IMAGESEARCH_CLIP_MODEL": str(tiny_clip),
                "IMAGESEARCH_TORCH_THREADS": "1", **env}
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "run_training.py"), *args], env=full_env,
                          capture_output=True, text=True, timeout=240, cwd=root)


def test_cli_builds_lists_and_fails_with_one_clear_line(tmp_path, tiny_clip):
    root = tmp_path / "root"
    write_demo(root / "data", general_per_category=2, shirts_per_category=2)
    ok = _cli(["shirts", "--no-progress"], root, tiny_clip)
    assert ok.returncode == 0, ok.stderr
    assert "index_building" in ok.stdout and "ran" in ok.stdout
    listing = _cli(["--list"], root, tiny_clip)
    assert "shirts" in listing.stdout and "yes (10)" in listing.stdout
    (root / "data" / "bad").mkdir()
    (root / "data" / "bad" / "products.csv").write_text("shopify_product_id,images\n1,a.jpg\n")
    for args, env, needle in [
        (["nosuch"], {}, "unknown model 'nosuch'"),
        (["bad"], {}, "missing required column(s) title"),
        (["general"], {"IMAGESEARCH_CLIP_MODEL": "openai/clip-vit-base-patch32", "HF_HUB_OFFLINE": "1"},
         "IMAGESEARCH_CLIP_MODEL"),
    ]:
        proc = _cli([*args, "--no-progress"], root, tiny_clip, **env)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 1 and len(lines) == 1 and needle in lines[0], proc.stderr
    assert (root / "logs" / "training.log").is_file() and (root / "logs" / "pipeline.log").is_file()


def test_run_pipeline_modes(tmp_path, tiny_clip):
    root = tmp_path / "root"
    write_demo(root / "data", general_per_category=2, shirts_per_category=2)
    env = {**os.environ, "IMAGESEARCH_ROOT": str(root), "IMAGESEARCH_CLIP_MODEL": str(tiny_clip)}
    run = lambda *a: subprocess.run([sys.executable, str(PROJECT_ROOT / "run_pipeline.py"), *a, "--no-progress"],  # noqa: E731
                                    env=env, capture_output=True, text=True, timeout=240)
    data = run("--mode", "data")
    assert data.returncode == 0 and (root / "models/general/download_report.json").is_file()
    assert not (root / "models/general/index.json").exists()
    ml = run("--mode", "ml", "--model", "shirts")
    assert ml.returncode == 0, ml.stderr
    assert (root / "models/shirts/index.json").is_file() and not (root / "models/general/index.json").exists()
