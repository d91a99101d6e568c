"""A model with a fine-tuned head: queries go through it; a new head re-projects the store on reload (on
Milvus the build adopts it: a replica whose head differs answers 503 and never rewrites the shared
collection); a head that does not fit the catalogue's vectors is a 503 while the previous one keeps
serving. On both stores (the heads keep the dimension: a Milvus collection's vector field has a fixed one)."""

from __future__ import annotations

import csv
import json

import numpy as np

from tests.api.conftest import API_KEY, build_models, start_server, stop_server
from tests.stores import both_stores


@both_stores
def test_queries_go_through_the_head(copy_built, tmp_path):
    from core.head import save_head

    settings = copy_built(tmp_path / "head_root", ("shirts",), api_key=API_KEY)
    root = settings.root
    rng = np.random.default_rng(0)
    head_path = root / "models" / "shirts" / "head.safetensors"
    save_head(head_path, [rng.standard_normal((32, 32)).astype(np.float32)], [np.zeros(32, np.float32)])
    build_models(settings, ("shirts",))  # the index phase rebuilds through the head
    server = start_server(settings)
    try:
        with server.client() as c:
            info = {m["name"]: m for m in c.get("/models").json()["models"]}["shirts"]
            assert info["has_head"] and info["searchable"]
            with open(root / "data" / "shirts" / "products.csv", encoding="utf-8") as fh:
                single = next(r for r in csv.DictReader(fh) if len(json.loads(r["images"])) == 1)
            query = (root / "data" / "shirts" / json.loads(single["images"])[0]).read_bytes()
            r = c.post("/shirts/search", files={"file": ("q.jpg", query, "image/jpeg")})
            assert r.status_code == 200 and r.json()["results"][0]["id"] == single["shopify_product_id"]
            assert c.get("/shirts/search/text", params={"q": "blue shirt"}).status_code == 200

            save_head(head_path, [rng.standard_normal((32, 32)).astype(np.float32)], [np.zeros(32, np.float32)])
            if settings.store == "milvus":  # a replica never rewrites the shared collection: the build adopts it
                r = c.post("/shirts/reload", headers={"X-API-Key": API_KEY})
                assert r.status_code == 503 and "build machine" in r.json()["detail"], r.text
                assert c.post("/shirts/search", files={"file": ("q.jpg", query)}).status_code == 200  # old one
                build_models(settings, ("shirts",))
            r = c.post("/shirts/reload", headers={"X-API-Key": API_KEY})  # the store re-projects through it
            assert r.status_code == 200, r.text
            r = c.post("/shirts/search", files={"file": ("q.jpg", query, "image/jpeg")})
            assert r.status_code == 200 and r.json()["results"][0]["id"] == single["shopify_product_id"]

            for shape in ((32, 64), (16, 64)):  # takes 64-dim vectors (the catalogue's are 32); and gives 16 too
                save_head(head_path, [rng.standard_normal(shape).astype(np.float32)], [np.zeros(shape[0], np.float32)])
                r = c.post("/shirts/reload", headers={"X-API-Key": API_KEY})
                assert r.status_code == 503 and "head" in r.json()["detail"], r.text
                assert c.post("/shirts/search", files={"file": ("q.jpg", query)}).status_code == 200  # old one serves
    finally:
        stop_server(server)
