"""Phase 4: build the FAISS index (through the fine-tuned head, if adopted) and write the bundle atomically."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import MissingInputError
from core.head import load_head
from core.types import PhaseName
from core.vector_index import build_index, write_index_bundle
from pipeline.base import PhaseResult, PipelineContext, file_digest
from pipeline.download import images_manifest_path
from pipeline.extraction import backbone_identity
from utils.atomic import read_json, save_npy_atomic

logger = logging.getLogger(__name__)


def product_metadata(product: dict[str, Any], images: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The metadata row the API returns for a product (index position = row number)."""
    preview = images.get(product["preview_image"], {})
    if preview.get("status") != "ok":  # fall back to the first view that downloaded
        preview = next((images[r] for r in product["images"] if images.get(r, {}).get("status") == "ok"), {})
    return {"id": product["id"], "title": product["title"], "category": product.get("category", ""),
            "preview_image": product["preview_image"], "preview_cache": preview.get("cache"),
            "images": product["images"], "extra": product.get("extra", {})}


class IndexPhase:
    name = PhaseName.INDEX

    def fingerprint(self, ctx: PipelineContext) -> dict[str, Any]:
        s = ctx.settings
        return {"embeddings": file_digest(ctx.paths.clip_embeddings),
                "ids": file_digest(ctx.paths.models / "embedding_ids.json"),
                "products": file_digest(ctx.paths.processed_products),
                "images": file_digest(images_manifest_path(ctx.paths)),
                "head": file_digest(ctx.paths.head), "index_type": ctx.spec.index_type_for(s).value,
                "metric": s.metric.value, "hnsw": [s.hnsw_m, s.hnsw_ef_search], "nprobe": s.ivf_nprobe,
                "auto": [s.flat_max_products, s.hnsw_max_products]}

    def outputs(self, ctx: PipelineContext) -> list[Path]:
        return [ctx.paths.index, ctx.paths.metadata, ctx.paths.manifest, ctx.paths.embeddings]

    def run(self, ctx: PipelineContext) -> PhaseResult:
        if not ctx.paths.clip_embeddings.is_file():
            raise MissingInputError(ctx.model, "no embeddings yet: run the extraction phase first")
        vectors = np.load(ctx.paths.clip_embeddings, allow_pickle=False)
        ids = read_json(ctx.paths.models / "embedding_ids.json")
        by_id = {p["id"]: p for p in read_json(ctx.paths.processed_products)["products"]}
        images = read_json(images_manifest_path(ctx.paths))["images"]
        head = load_head(ctx.paths.head)
        if head is not None:
            vectors = head.apply(vectors)
        index = build_index(vectors, ctx.spec.index_type_for(ctx.settings), ctx.settings.metric, ctx.settings)
        save_npy_atomic(ctx.paths.embeddings, vectors)
        manifest = write_index_bundle(ctx.paths, index, [product_metadata(by_id[i], images) for i in ids], {
            "model": ctx.model, "display_name": ctx.spec.display_name, "backbone": ctx.backbone,
            "backbone_identity": backbone_identity(ctx.backbone), "metric": ctx.settings.metric.value,
            "head": head.sha256 if head else None, "precision": ctx.settings.precision.value})
        logger.info("%s: %s index with %d products written", ctx.model, manifest["index_type"], len(ids))
        return PhaseResult(ok=len(ids), details={"index_type": manifest["index_type"], "dim": manifest["dim"],
                                                 "head": bool(head)})
