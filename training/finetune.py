"""Fine-tuning: a projection head on frozen CLIP embeddings, adopted only if it beats zero-shot.

Products are split per category into train / validation / test. The head is judged by test mAP@10:
each test product (never seen in training) queries the whole catalogue, itself excluded, once with
raw CLIP vectors (the zero-shot baseline) and once through the head. Adopting it writes
models/<m>/head.safetensors, re-projects the store's stored CLIP vectors through it and rebuilds the
index (the API then applies the head to queries on its own).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, UTC
from typing import Any

import numpy as np

from core.config import Settings
from core.errors import NotEnoughDataError, TrainingError
from core.head import ProjectionHead, save_head
from core.model_config import ModelSpec
from core.types import Embeddings
from training import metrics
from training.report import EVALUATION_FILE, update_results
from training.trainer import TrainConfig, fit_head
from training.store_data import open_built_store, read_products
from utils.atomic import write_json_atomic

logger = logging.getLogger(__name__)

MIN_PER_CATEGORY = 5  # 2 to train (a positive pair), 2 to validate (a pair), 1 to test
VAL_FRACTION = TEST_FRACTION = 0.15
CANDIDATE_FILE = "head_candidate.safetensors"
CHECKPOINT_FILE = "finetune_head.safetensors"


@dataclass(frozen=True)
class Split:
    """Catalogue rows per part; categories too small to split are in none of them."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def check_trainable(labels: np.ndarray, names: list[str], model: str) -> np.ndarray:
    """Codes of the categories large enough to train on; NotEnoughDataError when fewer than two."""
    counts = np.bincount(labels[labels >= 0], minlength=len(names))
    eligible = np.flatnonzero(counts >= MIN_PER_CATEGORY)
    if len(eligible) >= 2:
        return eligible
    if len(names) < 2:
        shown = f"a single category ({names[0]!r})" if names else "no categories"
        raise NotEnoughDataError(model, f"cannot fine-tune: the catalogue has {shown}; the triplet loss "
                                        "learns from differences between at least two categories")
    raise NotEnoughDataError(model, f"cannot fine-tune: it needs at least 2 categories with at least "
                                    f"{MIN_PER_CATEGORY} products each (2 train, 2 validation, 1 test); "
                                    f"{len(eligible)} of {len(names)} categories qualify "
                                    f"(largest has {int(counts.max())} products)")


def stratified_split(labels: np.ndarray, categories: np.ndarray, seed: int) -> Split:
    """Per category: 15% validation and 15% test (at least 2 and 1), the rest train."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for code in categories:
        rows = rng.permutation(np.flatnonzero(labels == code))
        n_val = max(2, round(len(rows) * VAL_FRACTION))
        n_test = max(1, round(len(rows) * TEST_FRACTION))
        parts["val"].append(rows[:n_val])
        parts["test"].append(rows[n_val:n_val + n_test])
        parts["train"].append(rows[n_val + n_test:])
    return Split(**{name: np.sort(np.concatenate(p)) for name, p in parts.items()})


def split_metrics(vectors: Embeddings, labels: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    """Summary metrics of ``rows`` querying all of ``vectors``, each query's own row excluded."""
    qm = metrics.query_metrics(vectors[rows] @ vectors.T, labels[rows], labels, query_items=rows)
    return metrics.summarize(qm)


def should_adopt(baseline_map: float | None, tuned_map: float | None, min_gain: float = 0.0) -> bool:
    """The head is adopted only when it strictly beats the zero-shot test mAP@10."""
    return baseline_map is not None and tuned_map is not None and tuned_map > baseline_map + min_gain


def finetune_embeddings(embeddings: Embeddings, labels: np.ndarray, names: list[str], config: TrainConfig, *,
                        model: str = "synthetic", on_improve=None, progress: bool = False) -> dict[str, Any]:
    """The core, images not needed: split, train, and measure test mAP@10 before and after."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    split = stratified_split(labels, check_trainable(labels, names, model), config.seed)
    fit = fit_head(embeddings[split.train], labels[split.train], embeddings[split.val], labels[split.val],
                   config, on_improve=on_improve, progress=progress)
    head = ProjectionHead(tuple(fit.weights), tuple(fit.biases), sha256="")
    baseline = split_metrics(embeddings, labels, split.test)
    tuned = split_metrics(head.apply(embeddings), labels, split.test)
    return {"fit": fit, "split": split, "baseline": baseline, "tuned": tuned,
            "adopt": should_adopt(baseline["map_at_10"], tuned["map_at_10"])}


def _load_training_data(settings: Settings, spec: ModelSpec) -> tuple[Embeddings, list[str]]:
    """The stored raw CLIP vectors (never the head's output: a new head replaces the old one, it does
    not stack on it) and the categories, row-aligned. API-added products are included."""
    store = open_built_store(settings, spec)
    try:
        products = read_products(store, clip=True)
    finally:
        store.close()
    return products.vectors, products.categories


def _resolve_device(settings: Settings) -> str:
    import torch

    from core.encoder import resolve_device

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    return resolve_device(settings.device)


def _checkpointer(settings: Settings, spec: ModelSpec):
    """Keep the best head so far in checkpoints/<m>/ (a crash mid-training still leaves it)."""
    folder = spec.paths(settings).checkpoints

    def save(epoch: int, weights: list, biases: list) -> None:
        save_head(folder / CHECKPOINT_FILE, weights, biases)
        write_json_atomic(folder / "finetune.json", {"best_epoch": epoch, "head": CHECKPOINT_FILE,
                                                     "saved_at": _now()})

    return save


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def adopt_head(settings: Settings, spec: ModelSpec, weights: list, biases: list, *, progress: bool = True) -> None:
    """Write models/<m>/head.safetensors, re-project the store's vectors through it and rebuild the index.

    Every stored product (CSV or API) keeps its raw CLIP vector, so re-projection covers them all. The
    head file and the store must agree (the API applies the head to queries whenever the file exists),
    so if the rebuild fails the previous head, or its absence, is restored and the store re-projected
    back. Holds the model's build lock, so no pipeline run interleaves.
    """
    from pipeline.runner import model_lock

    paths = spec.paths(settings)
    with model_lock(paths.models, spec.name):
        previous = paths.head.read_bytes() if paths.head.is_file() else None
        save_head(paths.head, weights, biases)
        try:
            _rebuild_index(settings, spec, progress)
        except BaseException as exc:
            _restore_head(settings, spec, previous)
            if isinstance(exc, Exception):
                raise TrainingError(spec.name, f"head not adopted: rebuilding the index through it failed "
                                               f"({type(exc).__name__}: {exc})") from exc
            raise


def _restore_head(settings: Settings, spec: ModelSpec, previous: bytes | None) -> None:
    """Put the previous head file back and re-project the store to it (its index rebuilds on next open)."""
    from core.catalogue_store import open_store
    from utils.atomic import write_bytes_atomic

    path = spec.paths(settings).head
    if previous is None:
        path.unlink(missing_ok=True)
    else:
        write_bytes_atomic(path, previous)
    try:
        open_store(settings, spec, open_index=False).close()  # opening re-projects to the file's head
    except Exception:
        logger.exception("%s: re-projecting the store back to the previous head failed; it will be redone "
                         "when the store is next opened", spec.name)


def _rebuild_index(settings: Settings, spec: ModelSpec, progress: bool) -> None:
    from pipeline.base import PipelineContext
    from pipeline.indexing import IndexPhase
    from pipeline.runner import run_phases

    ctx = PipelineContext(settings=settings, spec=spec, progress=progress)
    try:
        ctx.store()  # opening the store re-projects every stored CLIP vector through the new head
        # the index phase's fingerprint includes the head's sha, so this rebuilds rather than skips
        run_phases(ctx, [IndexPhase()])
    finally:
        ctx.close()


def run_finetune(settings: Settings, spec: ModelSpec, *, progress: bool = True) -> dict[str, Any]:
    """Train a head on the model's CLIP embeddings, adopt it if it beats zero-shot, record both."""
    start = time.perf_counter()
    vectors, categories = _load_training_data(settings, spec)
    labels, names = metrics.encode_labels(categories)
    config = TrainConfig.from_settings(settings, device=_resolve_device(settings))
    out = finetune_embeddings(vectors, labels, names, config, model=spec.name,
                              on_improve=_checkpointer(settings, spec), progress=progress)
    fit, paths = out["fit"], spec.paths(settings)
    save_head(paths.models / CANDIDATE_FILE, fit.weights, fit.biases)
    base_map, tuned_map = out["baseline"]["map_at_10"], out["tuned"]["map_at_10"]
    if out["adopt"]:
        adopt_head(settings, spec, fit.weights, fit.biases, progress=progress)
        decision = f"test mAP@10 {tuned_map:.4f} > zero-shot {base_map:.4f}"
    else:
        decision = f"test mAP@10 {tuned_map:.4f} does not beat zero-shot {base_map:.4f}"
        if paths.head.is_file():
            decision += "; the previously adopted head stays"
    result = {"model": spec.name, "trained_at": _now(), "head_kind": config.head, "margin": config.margin,
              "device": config.device, "epochs_run": fit.epochs_run, "best_epoch": fit.best_epoch,
              "best_val_loss": fit.best_val_loss, "initial_val_loss": fit.initial_val_loss,
              "split": out["split"].sizes(), "categories_trained": int(len(np.unique(labels[out["split"].train]))),
              "baseline_map_at_10": base_map, "tuned_map_at_10": tuned_map,
              "baseline": out["baseline"], "tuned": out["tuned"], "adopted": bool(out["adopt"]),
              "decision": decision, "candidate": str(paths.models / CANDIDATE_FILE),
              "seconds": round(time.perf_counter() - start, 2)}
    update_results(paths.models / EVALUATION_FILE, {"finetune": result})
    logger.info("%s: fine-tuning %s", spec.name, decision)
    return result
