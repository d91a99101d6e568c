"""Phase 4: bring the model's index (FAISS beside the local store, Milvus's own vector index) up to date with
the store - catch up on changes, or rebuild (and tune) when it is missing, damaged, or of another type than the
catalogue's size calls for - and refit its calibration when it is stale."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from core.ann import INDEX_JSON, IndexInfo, check_saved
from core.calibration import CALIBRATION_JSON
from core.types import PhaseName, StoreKind
from pipeline.base import PhaseResult, PipelineContext
from pipeline.extraction import head_sha
from utils.atomic import read_json

logger = logging.getLogger(__name__)


class IndexPhase:
    name = PhaseName.INDEX

    def fingerprint(self, ctx: PipelineContext) -> dict[str, Any]:
        s = ctx.settings
        return {"store": ctx.store().generation(), "head": head_sha(ctx),
                "index_type": ctx.spec.index_type_for(s).value,
                "metric": s.metric.value, "hnsw": [s.hnsw_m, s.hnsw_ef_search], "nprobe": s.ivf_nprobe,
                "auto": [s.flat_max_products, s.hnsw_max_products, s.ivfsq_min_products, s.ivfpq_min_products],
                "tuning": [s.recall_target, s.tune_latency_ms]}

    def outputs(self, ctx: PipelineContext) -> list[Path]:
        return [ctx.paths.models / INDEX_JSON, ctx.paths.models / CALIBRATION_JSON]

    def intact(self, ctx: PipelineContext) -> bool:
        """The index file index.json names is there at the size it was written (a cut-short file is rebuilt)."""
        if ctx.spec.store_for(ctx.settings) == StoreKind.MILVUS:
            return True  # the index lives in Milvus; index.json only describes it
        try:
            check_saved(ctx.paths.models, IndexInfo.from_json(read_json(ctx.paths.models / INDEX_JSON)))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("%s: saved index not intact (%s): the index phase runs again", ctx.model, exc)
            return False
        return True

    def run(self, ctx: PipelineContext) -> PhaseResult:
        store = ctx.store()
        live = store.open_index()
        if live is None:
            from core.errors import NoUsableProductsError

            raise NoUsableProductsError(ctx.model, "the catalogue is empty; nothing to index")
        if live.needs_compaction():
            live = store.rebuild(save=False)
            store.install_index(live)
        if _saved(ctx) != (live.generation, live.info.file):  # behind, or built but not saved (a full disk)
            store.save_index()
        cal = store.ensure_calibration()  # refit when the index was rebuilt or the head changed
        info = live.info
        logger.info("%s: %s index with %d products at generation %d", ctx.model, info.kind, info.count,
                    info.generation)
        return PhaseResult(ok=info.count, details={"index_type": info.kind.value, "dim": info.dim,
                                                   "head": bool(info.head), "generation": info.generation,
                                                   **info.params,
                                                   **({"match_midpoint_image": round(cal.image.midpoint, 4)}
                                                      if cal is not None else {}),
                                                   **({"recall_at_10": info.tuning["recall_at_10"]}
                                                      if "recall_at_10" in info.tuning else {})})


def _saved(ctx: PipelineContext) -> tuple[int, str] | None:
    """The generation and file of the index index.json describes."""
    try:
        info = read_json(ctx.paths.models / INDEX_JSON)
        return int(info["generation"]), str(info.get("file") or "")
    except (OSError, ValueError, KeyError, TypeError):
        return None
