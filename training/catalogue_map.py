"""The catalogue as a whole, for the merchant: a 2-D map (PCA, then t-SNE) and k-means clusters with
representative products and category purity, over a seeded sample of a store's indexed vectors.

t-SNE rather than UMAP: scikit-learn's t-SNE needs no numba JIT (UMAP's first call compiles for tens of
seconds on a small CPU), and on the sample sizes used here (up to a few thousand) it takes seconds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.store import ModelStore
from core.store import Product

PCA_DIMS = 50


@dataclass(frozen=True)
class Sample:
    products: list[Product]
    vectors: np.ndarray  # (n, d) unit rows, in index space


def sample(store: ModelStore, n: int, seed: int) -> Sample:
    ids, vectors = store.sample_vectors(n, seed)
    found = {p.id: p for p in store.get(ids)}
    keep = [i for i, pid in enumerate(ids) if pid in found]
    return Sample(products=[found[ids[i]] for i in keep], vectors=np.asarray(vectors[keep], dtype=np.float32))


def project(vectors: np.ndarray, seed: int) -> np.ndarray:
    """(n, d) -> (n, 2): PCA to at most 50 dimensions, then t-SNE (PCA alone below 5 points)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(vectors)
    if n < 2:
        return np.zeros((n, 2), dtype=np.float32)
    reduced = PCA(n_components=min(PCA_DIMS, n, vectors.shape[1]), random_state=seed).fit_transform(vectors)
    if n < 5:
        return np.asarray(np.pad(reduced[:, :2], ((0, 0), (0, max(0, 2 - reduced.shape[1])))), dtype=np.float32)
    perplexity = float(min(30.0, (n - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=500)
    return np.asarray(tsne.fit_transform(reduced), dtype=np.float32)


def map_points(data: Sample, seed: int) -> list[dict[str, Any]]:
    xy = project(data.vectors, seed)
    return [{"id": p.id, "title": p.title, "category": p.category or "(none)", "x": round(float(x), 4),
             "y": round(float(y), 4)} for p, (x, y) in zip(data.products, xy, strict=True)]


def clusters(data: Sample, k: int, seed: int, representatives: int = 4) -> list[dict[str, Any]]:
    """k-means on the unit vectors; per cluster its size, majority category and purity (the majority's
    share), and the products nearest its centre."""
    from sklearn.cluster import KMeans

    k = max(1, min(k, len(data.products)))
    if not data.products:
        return []
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(data.vectors)
    out = []
    for c in range(k):
        members = np.flatnonzero(km.labels_ == c)
        if not len(members):
            continue
        counts = Counter(data.products[i].category or "(none)" for i in members)
        top, top_n = counts.most_common(1)[0]
        dist = np.linalg.norm(data.vectors[members] - km.cluster_centers_[c], axis=1)
        nearest = members[np.argsort(dist)[:representatives]]
        out.append({"cluster": c, "size": int(len(members)), "category": top,
                    "purity": round(top_n / len(members), 4), "categories": dict(counts.most_common()),
                    "representatives": [{"id": data.products[i].id, "title": data.products[i].title,
                                         "category": data.products[i].category or None} for i in nearest]})
    return sorted(out, key=lambda c: -c["size"])
