"""Opening a model's catalogue store, and migrating a model built by the file-based release into it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from core.config import Settings
from core.head import load_head
from core.local_store import LocalStore
from core.model_config import ModelPaths, ModelSpec
from core.sqlite_store import store_path
from core.store import ModelStore, Product, ProductVector, Source
from core.types import StoreKind

logger = logging.getLogger(__name__)

LEGACY_FILES = ("index.faiss", "metadata.jsonl", "manifest.json", "embeddings.npy", "clip_embeddings.npy",
                "embedding_ids.json", "view_embeddings.npy", "view_keys.json", "processed_products.json",
                "images.json")
_BATCH = 5000


def open_store(settings: Settings, spec: ModelSpec, *, open_index: bool = True) -> ModelStore:
    """The model's store: under ``models/<m>/`` (created empty when new; a legacy build is migrated), or
    its Milvus collection when the model's store is milvus (model.json, else IMAGESEARCH_STORE)."""
    paths = spec.paths(settings)
    if spec.store_for(settings) == StoreKind.MILVUS:
        from core.milvus_store import MilvusStore

        return MilvusStore(paths.models, settings, name=spec.name, index_type=spec.index_type_for(settings),
                           head=load_head(paths.head), open_index=open_index, lexical=spec.lexical())
    legacy = not store_path(paths.models).exists() and (paths.models / "metadata.jsonl").is_file()
    store = LocalStore(paths.models, settings, name=spec.name, index_type=spec.index_type_for(settings),
                       head=load_head(paths.head), open_index=False, lexical=spec.lexical())
    if legacy:
        migrate_legacy(store, paths)
    if open_index:
        store.open_index()
    return store


def store_exists(settings: Settings, spec: ModelSpec) -> bool:
    """True when the model has a catalogue to open (opening one that does not creates it empty)."""
    paths = spec.paths(settings)
    if spec.store_for(settings) == StoreKind.MILVUS:
        from core.milvus_client import client, resolve_collection

        return bool(client(settings).has_collection(resolve_collection(settings, spec.name)))
    return store_path(paths.models).exists() or (paths.models / "metadata.jsonl").is_file()


def migrate_legacy(store: LocalStore, paths: ModelPaths) -> int:
    """Import metadata.jsonl and its vectors (products the CSV did not list become API products),
    then move the old files to ``models/<m>/legacy/``. Nothing is deleted."""
    folder = paths.models
    csv_ids = set(_read_json(folder / "embedding_ids.json") or [])
    vectors = np.load(folder / "embeddings.npy", mmap_mode="r") if (folder / "embeddings.npy").is_file() else None
    clip = _clip_by_id(folder)
    has_head = bool((_read_json(folder / "manifest.json") or {}).get("head"))
    batch: list[ProductVector] = []
    total = 0
    with open(folder / "metadata.jsonl", encoding="utf-8") as fh:
        for pos, line in enumerate(fh):
            if not line.strip():
                continue
            row: dict[str, Any] = json.loads(line)
            indexed = np.asarray(vectors[pos], dtype=np.float32) if vectors is not None else None
            if indexed is None:
                raise ValueError("embeddings.npy is missing: the legacy model cannot be migrated")
            raw = clip.get(str(row["id"]))
            batch.append(ProductVector(_legacy_product(row, str(row["id"]) in csv_ids),
                                       clip=raw if raw is not None else indexed,
                                       vector=indexed if has_head else None))
            if len(batch) >= _BATCH:
                total += len(batch)
                store.upsert(batch)
                batch = []
    if batch:
        total += len(batch)
        store.upsert(batch)
    _move_legacy(folder)
    logger.warning("%s: migrated %d products from the file-based release into %s (old files in %s)",
                   store.name, total, store.db.path, folder / "legacy")
    return total


def _clip_by_id(folder: Path) -> dict[str, np.ndarray]:
    ids = _read_json(folder / "embedding_ids.json")
    path = folder / "clip_embeddings.npy"
    if not ids or not path.is_file():
        return {}
    vectors = np.load(path, mmap_mode="r")
    return {str(i): np.asarray(vectors[n], dtype=np.float32) for n, i in enumerate(ids)}


def _legacy_product(row: dict[str, Any], from_csv: bool) -> Product:
    return Product(id=str(row["id"]), title=str(row.get("title") or ""), category=str(row.get("category") or ""),
                   images=tuple(row.get("images") or ()), preview_image=str(row.get("preview_image") or ""),
                   preview_cache=row.get("preview_cache"), extra=dict(row.get("extra") or {}),
                   source=Source.CSV if from_csv else Source.API)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _move_legacy(folder: Path) -> None:
    target = folder / "legacy"
    target.mkdir(exist_ok=True)
    for name in LEGACY_FILES:
        if (folder / name).exists():
            shutil.move(str(folder / name), str(target / name))
