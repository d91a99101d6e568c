"""Catalogue evaluation: category-relevance ranking metrics and robustness to perturbed queries.

Each sampled product is queried by its cached preview image (encoded by the model's CLIP backbone,
then the adopted head if any) against the vectors as indexed, itself excluded. Ranking is exact
(numpy, ties by catalogue order), so the figures measure the embeddings; the index's approximation is what
``--bench-index`` measures.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.config import Settings
from core.errors import IndexNotReadyError, NotEnoughDataError
from core.head import ProjectionHead
from core.model_config import ModelSpec
from core.types import Embeddings
from training import metrics
from training.report import EVALUATION_FILE, plot_category_precision, update_results
from training.store_data import StoredProducts, open_built_store, read_products

if TYPE_CHECKING:
    from PIL import Image

    from core.encoder import ClipEncoder

logger = logging.getLogger(__name__)

ROBUSTNESS_K = 5
WORST_SHOWN = 5
_SCORE_CHUNK = 256  # queries scored at once: bounds the (chunk x catalogue) score matrix


def _downscaled(img: Image.Image) -> Image.Image:
    from PIL import Image as PILImage

    w, h = img.size
    return img.resize((max(8, w // 4), max(8, h // 4)), PILImage.Resampling.BICUBIC)


def _jpeg_low_quality(img: Image.Image) -> Image.Image:
    from PIL import Image as PILImage

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=10)
    return PILImage.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _center_crop(img: Image.Image) -> Image.Image:
    w, h = img.size
    cw, ch = max(1, round(w * 0.8)), max(1, round(h * 0.8))
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def _mirrored(img: Image.Image) -> Image.Image:
    from PIL import ImageOps

    return ImageOps.mirror(img)


def _brightness(factor: float) -> Callable[[Image.Image], Image.Image]:
    def apply(img: Image.Image) -> Image.Image:
        from PIL import ImageEnhance

        return ImageEnhance.Brightness(img).enhance(factor)

    return apply


PERTURBATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "downscaled_25pct": _downscaled,
    "jpeg_quality_10": _jpeg_low_quality,
    "center_crop_80pct": _center_crop,
    "mirrored": _mirrored,
    "brighter_20pct": _brightness(1.2),
    "darker_20pct": _brightness(0.8),
}


@dataclass(frozen=True)
class Catalogue:
    """A built model as evaluation sees it: its stored products (vectors as indexed, through the head
    if one is adopted) and the image cache their previews live in."""

    products: StoredProducts
    image_cache: Path

    @property
    def vectors(self) -> Embeddings:
        return self.products.vectors

    @property
    def head(self) -> ProjectionHead | None:
        return self.products.head

    def __len__(self) -> int:
        return len(self.products)

    def preview_path(self, row: int) -> Path | None:
        rel = self.products.preview_cache[row]
        if not rel:
            return None
        path = (self.image_cache / rel).resolve()
        # the path comes from the store: never let it point outside the cache
        return path if path.is_relative_to(self.image_cache.resolve()) and path.is_file() else None


def load_catalogue(settings: Settings, spec: ModelSpec) -> Catalogue:
    """The model's products and indexed vectors from its store; a typed error if it is unusable."""
    store = open_built_store(settings, spec)
    try:
        products = read_products(store)
    finally:
        store.close()
    head = products.head
    if head is not None and head.output_dim != products.vectors.shape[1]:
        raise IndexNotReadyError(spec.name, "head.safetensors does not match the stored vectors; "
                                            "re-run the index phase")
    return Catalogue(products, spec.paths(settings).image_cache)


def _load_image(path: Path, transform: Callable | None) -> Image.Image:
    from PIL import Image as PILImage

    from utils.images import to_rgb

    with PILImage.open(path) as raw:
        img = to_rgb(raw)
        img.load()
    return transform(img) if transform else img


def _preview(cat: Catalogue, row: int) -> Path:
    path = cat.preview_path(row)
    if path is None:
        raise ValueError(f"row {row} has no cached preview image")
    return path


def embed_previews(encoder: ClipEncoder, cat: Catalogue, rows: np.ndarray, *, batch_size: int,
                   transform: Callable | None = None, desc: str = "", progress: bool = False) -> Embeddings:
    """Query vectors for ``rows``: preview image (optionally perturbed) -> CLIP -> head."""
    from tqdm import tqdm

    out = []
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch", disable=not progress,
                      leave=False):
        batch = [_load_image(_preview(cat, int(r)), transform) for r in rows[start:start + batch_size]]
        out.append(encoder.encode_images(batch))
    vecs = np.concatenate(out) if out else np.zeros((0, encoder.dim), dtype=np.float32)
    return cat.head.apply(vecs) if cat.head is not None else vecs


def _sample(rows: np.ndarray, limit: int, seed: int) -> np.ndarray:
    if len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))


def _ranking_metrics(queries: Embeddings, rows: np.ndarray, cat: Catalogue, labels: np.ndarray,
                     names: list[str]) -> dict[str, Any]:
    parts = [metrics.query_metrics(queries[s:s + _SCORE_CHUNK] @ cat.vectors.T, labels[rows[s:s + _SCORE_CHUNK]],
                                   labels, query_items=rows[s:s + _SCORE_CHUNK])
             for s in range(0, len(rows), _SCORE_CHUNK)]
    qm = metrics.QueryMetrics.concat(parts)
    products = np.bincount(labels[labels >= 0], minlength=len(names))
    table = metrics.per_category(qm, labels[rows], names, products=products)
    scored = [(row["precision_at_5"], name) for name, row in table.items() if row["precision_at_5"] is not None]
    return {**metrics.summarize(qm), "per_category": table,
            "worst_categories": [name for _, name in sorted(scored)[:min(WORST_SHOWN, max(1, len(scored) // 2))]],
            "categories_with_one_product": [n for n, c in zip(names, products, strict=True) if c == 1]}


def _robustness(encoder: ClipEncoder, cat: Catalogue, rows: np.ndarray, clean: Embeddings,
                settings: Settings, progress: bool) -> dict[str, Any]:
    from tqdm import tqdm

    result: dict[str, Any] = {"queries": int(len(rows)), "k": ROBUSTNESS_K,
                              "original": metrics.hit_rate(clean @ cat.vectors.T, rows, ROBUSTNESS_K)}
    for name, transform in tqdm(PERTURBATIONS.items(), desc="robustness", unit="perturbation",
                                disable=not progress):
        queries = embed_previews(encoder, cat, rows, batch_size=settings.batch_size or encoder.default_batch,
                                 transform=transform)
        result[name] = metrics.hit_rate(queries @ cat.vectors.T, rows, ROBUSTNESS_K)
    return result


def _category_note(labels: np.ndarray, names: list[str]) -> str | None:
    sizes = np.bincount(labels[labels >= 0], minlength=len(names))
    if len(names) < 2:
        shown = f"a single category ({names[0]!r})" if names else "no categories"
        return f"category metrics skipped: the catalogue has {shown}; relevance by category needs at least two"
    if not (sizes >= 2).any():
        return "category metrics skipped: every category has a single product, so no query has a relevant match"
    return None


def run_evaluation(settings: Settings, spec: ModelSpec, *, progress: bool = True,
                   encoder: ClipEncoder | None = None) -> dict[str, Any]:
    """Evaluate a built model, write models/<m>/evaluation.json (+ chart) and return the results."""
    start = time.perf_counter()
    cat = load_catalogue(settings, spec)
    labels, names = metrics.encode_labels(cat.products.categories)
    with_preview = np.array([r for r in range(len(cat)) if cat.preview_path(r) is not None], dtype=np.int64)
    if len(with_preview) == 0:
        raise NotEnoughDataError(spec.name, "no product has a cached preview image to query with "
                                            "(run the download phase first)")
    if encoder is None:
        from core.encoder import ClipEncoder

        encoder = ClipEncoder.from_settings(settings, spec.backbone_for(settings))
    expected = cat.head.input_dim if cat.head is not None else cat.vectors.shape[1]
    if encoder.dim != expected:
        raise IndexNotReadyError(spec.name, f"the encoder gives {encoder.dim}-d vectors but the index (and head) "
                                            f"expect {expected}-d; rebuild with the current backbone")
    rows = _sample(with_preview, settings.eval_max_queries, settings.seed)
    queries = embed_previews(encoder, cat, rows, batch_size=settings.batch_size or encoder.default_batch,
                             desc="queries", progress=progress)
    result = _base_result(settings, spec, cat, names, len(with_preview))
    note = _category_note(labels, names)
    if note:
        result["notes"].append(note)
    else:
        result.update(_ranking_metrics(queries, rows, cat, labels, names))
        from training.calibration_report import calibration_section

        result["calibration"] = calibration_section(spec.paths(settings).models, queries, rows, cat.vectors, labels,
                                                    title=f"{spec.name}: reliability of match")
    robust_rows = _sample(np.arange(len(rows)), settings.robustness_max_queries, settings.seed)
    result["robustness"] = _robustness(encoder, cat, rows[robust_rows], queries[robust_rows], settings, progress)
    result["seconds"] = round(time.perf_counter() - start, 2)
    _write(settings, spec, result)
    logger.info("%s: evaluated %d queries in %.1fs, p@5=%s", spec.name, len(rows), result["seconds"],
                result.get("precision_at_5"))
    return result


def _base_result(settings: Settings, spec: ModelSpec, cat: Catalogue, names: list[str],
                 with_preview: int) -> dict[str, Any]:
    keys = ("precision_at_1", "precision_at_5", "precision_at_10", "mrr", "map_at_10")
    return {"model": spec.name, "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "backbone": spec.backbone_for(settings), "head": cat.head.sha256 if cat.head else None,
            "num_products": len(cat), "num_categories": len(names),
            "products_without_preview": len(cat) - with_preview,
            **{k: None for k in keys}, "queries": 0, "unscorable": 0, "per_category": {},
            "worst_categories": [], "categories_with_one_product": [], "notes": []}


def _write(settings: Settings, spec: ModelSpec, result: dict[str, Any]) -> None:
    folder = spec.paths(settings).models
    chart = plot_category_precision(result["per_category"], folder / "evaluation_precision_at_5.png",
                                    title=f"{spec.name}: precision@5 per category")
    result["chart"] = str(chart) if chart else None
    update_results(folder / EVALUATION_FILE, result)
