"""A model with a fine-tuned head: queries go through it; a new head re-projects the store on reload; a head
that does not fit the catalogue's vectors is a 503 while the previous one keeps serving."""

from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np

from tests.api.conftest import API_KEY, build_models, start_server, stop_server


def test_queries_go_through_the_head(built_root, tiny_clip, tmp_path):
    from core.config import load_settings
    from core.head import save_head

    root = tmp_path / "head_root"
    for sub in ("data", "models", "checkpoints"):
        shutil.copytree(built_root / sub, root / sub)
    settings = load_settings(root=root, clip_model=str(tiny_clip), device="cpu", api_key=API_KEY)
    rng = np.random.default_rng(0)
    head_path = root / "models" / "shirts" / "head.safetensors"
    save_head(head_path, [rng.standard_normal((16, 32)).astype(np.float32)], [np.zeros(16, np.float32)])
    build_models(settings, ("shirts",))  # the index phase rebuilds through the head
    server = start_server(settings)
    try:
        with server.client() as c:
            info = {m["name"]: m for m in c.get("/models").json()["models"]}["shirts"]
            assert info["has_head"] and info["searchable"]
            conn = sqlite3.connect(root / "models" / "shirts" / "catalogue.db")
            rows = [{"id": pid, "images": json.loads(images)} for pid, images in
                    conn.execute("SELECT id, images FROM products ORDER BY id")]
            conn.close()
            single = next(r for r in rows if len(r["images"]) == 1)
            query = (root / "data" / "shirts" / single["images"][0]).read_bytes()
            r = c.post("/shirts/search", files={"file": ("q.jpg", query, "image/jpeg")})
            assert r.status_code == 200 and r.json()["results"][0]["id"] == single["id"]
            assert c.get("/shirts/search/text", params={"q": "blue shirt"}).status_code == 200

            save_head(head_path, [rng.standard_normal((16, 32)).astype(np.float32)], [np.zeros(16, np.float32)])
            r = c.post("/shirts/reload", headers={"X-API-Key": API_KEY})  # the store re-projects through it
            assert r.status_code == 200, r.text
            r = c.post("/shirts/search", files={"file": ("q.jpg", query, "image/jpeg")})
            assert r.status_code == 200 and r.json()["results"][0]["id"] == single["id"]

            save_head(head_path, [rng.standard_normal((16, 64)).astype(np.float32)], [np.zeros(16, np.float32)])
            r = c.post("/shirts/reload", headers={"X-API-Key": API_KEY})
            assert r.status_code == 503 and "head" in r.json()["detail"]
            assert c.post("/shirts/search", files={"file": ("q.jpg", query)}).status_code == 200  # old one serves
    finally:
        stop_server(server)
