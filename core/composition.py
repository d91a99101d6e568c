"""A product's views become one stored vector: the one rule the pipeline, admin edits and embedding jobs share.

The mean of the views' unit CLIP vectors, normalised, is the product's CLIP vector; the model's head (if any)
projects it into the indexed space. A build also gives each product a digest of what it was made from, so a
rebuild that embeds the same views with the same encoder and head writes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.encoder import l2_normalize
from core.head import ProjectionHead
from core.store import Product, ProductVector


@dataclass(frozen=True)
class ProductViews:
    """A product and the unit vectors of its usable views (one row each), with the views' cache names.

    ``if_version``: write only while the stored product is still that version (see ``ProductVector``)."""

    product: Product
    vectors: np.ndarray | Sequence[np.ndarray]
    caches: Sequence[str] = ()
    if_version: float | None = None


def product_vectors(items: Sequence[ProductViews], head: ProjectionHead | None, *,
                    build_key: str | None = None) -> list[ProductVector]:
    """Each product's stored vectors: its views' mean, normalised, then ``head`` (one matrix product for all).

    With ``build_key`` (the identity of the encoder that embedded the views) each gets the build's digest
    (:func:`build_digest`); without it the store digests what it writes (metadata and both vectors)."""
    if not items:
        return []
    clips = [l2_normalize(np.mean(np.asarray(it.vectors, dtype=np.float32), axis=0)) for it in items]
    projected = head.apply(np.stack(clips)) if head is not None else [None] * len(items)
    return [ProductVector(it.product, clip=clip, vector=vector, if_version=it.if_version,
                          digest="" if build_key is None else build_digest(it, build_key, head))
            for it, clip, vector in zip(items, clips, projected, strict=True)]


def build_digest(it: ProductViews, build_key: str, head: ProjectionHead | None) -> str:
    """What a built product was made from: its metadata, its views' cache names, the encoder and the head."""
    p = it.product
    return hashlib.sha256(json.dumps([p.id, p.title, p.category, list(p.images), p.preview_image, dict(p.extra),
                                      p.preview_cache, build_key, head.sha256 if head else None, list(it.caches)],
                                     sort_keys=True, default=str).encode()).hexdigest()
