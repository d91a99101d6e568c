"""Why this match: POST /<model>/explain against the live server (real pipeline, tiny CLIP)."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from tests.api import images
from tests.fake_images import jpeg_bytes


def _first_product(root, model="general"):
    import csv

    with open(root / "data" / model / "products.csv", encoding="utf-8") as fh:
        row = next(csv.DictReader(fh))
    return row["shopify_product_id"], (root / "data" / model / json.loads(row["images"])[0]).read_bytes()


def test_explain_returns_a_png_overlay_of_query_and_hit(client, built_root):
    pid, own = _first_product(built_root)
    r = client.post("/general/explain", params={"product_id": pid}, files={"file": ("q.jpg", own, "image/jpeg")})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    both = Image.open(io.BytesIO(r.content))
    hit = Image.open(io.BytesIO(client.post("/general/explain", params={"product_id": pid, "view": "hit"},
                                            files={"file": ("q.jpg", own, "image/jpeg")}).content))
    assert both.width > 2 * hit.width - 1 and both.height == hit.height == 256


def test_explain_json_grids_and_the_disk_cache(client, built_root, live):
    pid, _ = _first_product(built_root)
    query = images.jpeg()
    r = client.post("/general/explain", params={"product_id": pid, "format": "json"}, content=query,
                    headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    grid = np.asarray(body["hit_grid"])
    assert grid.ndim == 2 and grid.shape[0] == grid.shape[1] and grid.min() >= 0 and grid.max() <= 1
    assert np.asarray(body["query_grid"]).shape == grid.shape and -1 <= body["score"] <= 1
    cache = built_root / "models" / "general" / "explain_cache"
    files = sorted(p.name for p in cache.iterdir())
    assert any(name.endswith(".json") for name in files)
    again = client.post("/general/explain", params={"product_id": pid, "format": "json"}, content=query,
                        headers={"content-type": "image/jpeg"})
    assert again.json() == body
    assert sorted(p.name for p in cache.iterdir()) == files  # served from the cache, nothing new written


def test_explain_errors_match_search(client, built_root, live):
    pid, _ = _first_product(built_root)
    assert client.post("/general/explain", params={"product_id": "nope"}, content=images.jpeg(),
                       headers={"content-type": "image/jpeg"}).status_code == 404
    assert client.post("/nope/explain", params={"product_id": pid}, content=images.jpeg(),
                       headers={"content-type": "image/jpeg"}).status_code == 404
    assert client.post("/general/explain", params={"product_id": pid}, content=b"not an image",
                       headers={"content-type": "image/jpeg"}).status_code == 400
    too_big = b"\xff" * (live.settings.max_upload_bytes + 1)
    assert client.post("/general/explain", params={"product_id": pid}, content=too_big,
                       headers={"content-type": "image/jpeg"}).status_code == 413
    assert client.post("/general/explain", content=images.jpeg(),
                       headers={"content-type": "image/jpeg"}).status_code == 422


def test_explain_grids_point_at_what_matches(tiny_clip):
    """Grad-CAM on the real code path: the maps are finite, non-trivial and one per image."""
    from core.config import load_settings
    from core.encoder import ClipEncoder
    from core.explain import explain_images

    encoder = ClipEncoder.from_settings(load_settings(clip_model=str(tiny_clip), device="cpu", precision="fp32"))
    rng = np.random.default_rng(0)
    a = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    found = explain_images(encoder, a, a)
    assert abs(found.score - 1) < 1e-4
    assert found.hit.max() == 1.0 and np.isfinite(found.query).all()


def test_the_explanation_cache_is_bounded_in_bytes_per_model(copy_built, tmp_path, built_root):
    """Each anonymous request with a new picture adds about 170 KB of grids and PNGs: the model's cache stays
    within IMAGESEARCH_EXPLAIN_CACHE_MAX_BYTES, the newest explanations kept."""
    from tests.api.conftest import start_server, stop_server

    settings = copy_built(tmp_path / "explain", ("general",), explain_cache_max_bytes=400_000)
    server = start_server(settings)
    pid, _ = _first_product(built_root)
    cache = settings.models_dir / "general" / "explain_cache"
    try:
        with server.client() as c:
            for seed in range(8):
                query = jpeg_bytes(seed=400 + seed)
                for view in ("both", "hit", "query"):
                    r = c.post("/general/explain", params={"product_id": pid, "view": view}, content=query,
                               headers={"content-type": "image/jpeg"})
                    assert r.status_code == 200, r.text
                assert sum(p.stat().st_size for p in cache.iterdir()) <= 400_000
            kept = sorted(p.name for p in cache.iterdir())
            assert 0 < len([n for n in kept if n.endswith(".json")]) < 8  # the oldest pictures' went
            again = c.post("/general/explain", params={"product_id": pid, "format": "json"},
                           content=jpeg_bytes(seed=407), headers={"content-type": "image/jpeg"})
            assert again.status_code == 200 and sorted(p.name for p in cache.iterdir()) == kept  # the newest
    finally:
        stop_server(server)
