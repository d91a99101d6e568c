"""TEMPORARY: build a model bundle directly until the pipeline phases land on main."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np

from core.encoder import ClipEncoder, l2_normalize
from core.types import IndexType, Metric
from core.vector_index import build_index, write_index_bundle
from utils.atomic import save_npy_atomic, write_bytes_atomic, write_json_atomic
from utils.images import decode_image, encode_jpeg


def build_direct(settings, spec) -> None:
    paths = spec.paths(settings)
    enc = ClipEncoder.from_settings(settings, spec.backbone_for(settings))
    rows, vecs = [], []
    with open(paths.csv, encoding="utf-8") as fh:
        for rec in csv.DictReader(fh):
            refs = json.loads(rec["images"])
            imgs = [decode_image((paths.data / r).read_bytes(), max_pixels=settings.max_image_pixels,
                                 shorter_side=settings.cache_image_size) for r in refs]
            blob = encode_jpeg(imgs[0])
            name = hashlib.sha256(blob).hexdigest()[:2] + "/" + hashlib.sha256(blob).hexdigest() + ".jpg"
            write_bytes_atomic(paths.image_cache / name, blob)
            vecs.append(l2_normalize(enc.encode_images(imgs).mean(0, keepdims=True))[0])
            extra = {k: v for k, v in rec.items() if k not in ("shopify_product_id", "title", "images",
                                                              "preview_image", "category")}
            rows.append({"id": rec["shopify_product_id"], "title": rec["title"], "category": rec["category"],
                         "preview_image": rec["preview_image"], "preview_cache": name, "images": refs,
                         "extra": extra})
    emb = np.stack(vecs).astype(np.float32)
    save_npy_atomic(paths.embeddings, emb)
    save_npy_atomic(paths.clip_embeddings, emb)
    write_json_atomic(paths.models / "embedding_ids.json", [r["id"] for r in rows])
    index = build_index(emb, IndexType.AUTO, Metric.COSINE, settings)
    write_index_bundle(paths, index, rows, {"model": spec.name, "backbone": spec.backbone_for(settings),
                                           "metric": "cosine", "head": None, "precision": enc.precision_name})
