"""Phase 3: CLIP features for every cached view, averaged per product; finished batches survive a crash."""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from core.encoder import l2_normalize
from core.errors import MissingInputError, NoUsableProductsError
from core.types import PhaseName
from pipeline.base import PhaseResult, PipelineContext, digest, file_digest
from pipeline.download import images_manifest_path
from utils.atomic import read_json, save_npy_atomic, write_atomic, write_json_atomic

if TYPE_CHECKING:
    from core.encoder import ClipEncoder

logger = logging.getLogger(__name__)


def backbone_identity(backbone: str) -> dict[str, Any]:
    """The backbone name plus, for a local folder, its weight files' sizes and times (new weights = redo)."""
    folder = Path(backbone).expanduser()
    if not folder.is_dir():
        return {"backbone": backbone}
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    return {"backbone": str(folder.resolve()),
            "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}}


def _product_views(ctx: PipelineContext) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(products, ref -> cache key) for every view that downloaded fine."""
    for path in (ctx.paths.processed_products, images_manifest_path(ctx.paths)):
        if not path.is_file():
            raise MissingInputError(ctx.model, f"{path.name} is missing: run the data phases first")
    products = read_json(ctx.paths.processed_products)["products"]
    images = read_json(images_manifest_path(ctx.paths))["images"]
    cache = {ref: st["cache"] for ref, st in images.items() if st.get("status") == "ok"}
    return products, cache


class _PartStore:
    """Embedded batches as parts/<n>.npz (keys + vectors); each part is written atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._next = len(list(folder.glob("part-*.npz")))  # counted once, not per saved batch

    def load(self) -> dict[str, np.ndarray]:
        done: dict[str, np.ndarray] = {}
        for part in sorted(self.folder.glob("part-*.npz")):
            try:
                with np.load(part, allow_pickle=False) as data:
                    done.update(zip(data["keys"].tolist(), data["vectors"], strict=True))
            except Exception as exc:  # a torn part from an old crash is just redone
                logger.warning("ignoring unreadable feature part %s: %s", part, exc)
        return done

    def save(self, keys: list[str], vectors: np.ndarray) -> None:
        write_atomic(self.folder / f"part-{self._next:06d}.npz",
                     lambda fh: np.savez(fh, keys=np.asarray(keys, dtype=str), vectors=vectors))
        self._next += 1


class ExtractionPhase:
    name = PhaseName.EXTRACTION

    def fingerprint(self, ctx: PipelineContext) -> dict[str, Any]:
        return {"products": file_digest(ctx.paths.processed_products),
                "images": file_digest(images_manifest_path(ctx.paths)), **self._model_key(ctx)}

    def outputs(self, ctx: PipelineContext) -> list[Path]:
        return [ctx.paths.clip_embeddings, ctx.paths.models / "embedding_ids.json"]

    @staticmethod
    def _model_key(ctx: PipelineContext) -> dict[str, Any]:
        return {**backbone_identity(ctx.backbone), "precision": ctx.settings.precision.value}

    def run(self, ctx: PipelineContext) -> PhaseResult:
        products, cache = _product_views(ctx)
        keys = list(dict.fromkeys(cache[r] for p in products for r in p["images"] if r in cache))
        store = _PartStore(ctx.paths.checkpoints / "features" / digest(self._model_key(ctx))[:16])
        done = store.load()
        todo = [k for k in keys if k not in done]
        failed: Counter[str] = Counter()
        new = self._embed(ctx, todo, store, failed) if todo else {}
        done.update(new)
        counts = {"embedded": len(new), "reused": len(keys) - len(todo)}
        return self._aggregate(ctx, products, cache, done, failed, counts)

    def _embed(self, ctx: PipelineContext, todo: list[str], store: _PartStore,
               failed: Counter[str]) -> dict[str, np.ndarray]:
        encoder = ctx.encoder()
        size = ctx.settings.batch_size
        batches = [todo[i:i + size] for i in range(0, len(todo), size)]
        out: dict[str, np.ndarray] = {}
        bar = tqdm(total=len(todo), desc=f"{ctx.model}: embedding", unit="img", disable=not ctx.progress)
        # decode + preprocess the next batch on a thread while the model runs on this one
        with ThreadPoolExecutor(max_workers=1) as pool:
            for keys, pixels in pool.map(lambda b: self._pixels(ctx, encoder, b, failed), batches):
                if keys:
                    vectors = encoder.encode_pixels(np.stack(pixels))
                    store.save(keys, vectors)
                    out.update(zip(keys, vectors, strict=True))
                bar.update(len(keys))
        bar.close()
        return out

    @staticmethod
    def _pixels(ctx: PipelineContext, encoder: ClipEncoder, batch: list[str],
                failed: Counter[str]) -> tuple[list[str], list[np.ndarray]]:
        from PIL import Image

        keys: list[str] = []
        pixels: list[np.ndarray] = []
        for key in batch:
            try:
                with Image.open(ctx.paths.image_cache / key) as img:
                    pixels.append(encoder.pixels(img.convert("RGB")))
                keys.append(key)
            except Exception as exc:
                logger.warning("%s: cached image %s unreadable: %s", ctx.model, key, exc)
                failed["unreadable cached image"] += 1
        return keys, pixels

    def _aggregate(self, ctx: PipelineContext, products: list[dict[str, Any]], cache: dict[str, str],
                   done: dict[str, np.ndarray], failed: Counter[str], counts: dict[str, int]) -> PhaseResult:
        ids: list[str] = []
        rows: list[np.ndarray] = []
        view_keys: list[list[str]] = []  # [product id, image ref] per view
        view_rows: list[np.ndarray] = []
        for p in products:
            views = [(r, done[cache[r]]) for r in p["images"] if r in cache and cache[r] in done]
            if not views:
                failed["no usable image"] += 1
                logger.warning("%s: product %s (row %s) has no usable image; left out", ctx.model, p["id"], p["row"])
                continue
            ids.append(p["id"])
            rows.append(l2_normalize(np.mean([v for _, v in views], axis=0)))
            view_keys.extend([p["id"], r] for r, _ in views)
            view_rows.extend(v for _, v in views)
        if not ids:
            raise NoUsableProductsError(ctx.model, "no product has a usable image; nothing to index")
        save_npy_atomic(ctx.paths.models / "view_embeddings.npy", np.stack(view_rows))
        write_json_atomic(ctx.paths.models / "view_keys.json", view_keys, indent=None)
        save_npy_atomic(ctx.paths.clip_embeddings, np.stack(rows).astype(np.float32))
        write_json_atomic(ctx.paths.models / "embedding_ids.json", ids, indent=None)
        return PhaseResult(ok=len(ids), failed=failed,
                           details={"views": len(view_rows), **counts,
                                    "dim": int(rows[0].shape[0]), "backbone": ctx.backbone})
