"""run_training.py <m> --duplicates: near-duplicate groups from the store's index into duplicates.json."""

from __future__ import annotations

import json

import numpy as np

from core.local_store import LocalStore
from core.model_config import ModelSpec
from core.store import Product, ProductVector
from training.duplicates import find_duplicates, format_duplicates


def test_duplicate_groups_are_written_largest_first(make_settings):
    settings = make_settings(duplicate_threshold=0.94)
    spec = ModelSpec(name="dupes")
    rng = np.random.default_rng(0)
    base = rng.normal(size=(20, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    copies = {0: 3, 5: 1}  # product 0 appears under three more ids, product 5 under one more
    items = [ProductVector(Product(id=f"p{i}", title="x"), v) for i, v in enumerate(base)]
    for src, n in copies.items():
        for j in range(n):
            v = base[src] + 0.01 * rng.normal(size=16).astype(np.float32)
            items.append(ProductVector(Product(id=f"p{src}-copy{j}", title="x"), v / np.linalg.norm(v)))
    store = LocalStore(spec.paths(settings).models, settings, name="dupes", open_index=False)
    store.upsert(items)
    store.open_index()
    store.close()
    report = find_duplicates(settings, spec)
    saved = json.loads((spec.paths(settings).models / "duplicates.json").read_text())
    assert [g["size"] for g in saved["groups"]] == [4, 2] and saved["products_in_groups"] == 6
    assert set(saved["groups"][0]["ids"]) == {"p0", "p0-copy0", "p0-copy1", "p0-copy2"}
    assert "4 products" in format_duplicates(report)
