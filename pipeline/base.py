"""Phase interface, shared run context and fingerprinted checkpoints."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from core.config import Settings
from core.errors import NoUsableProductsError
from core.model_config import ModelPaths, ModelSpec
from core.types import Embeddings, Executor, PhaseName
from utils.atomic import read_json, sha256_file, write_json_atomic
from utils.redact import redact_json

if TYPE_CHECKING:
    from core.encoder import ClipEncoder
    from core.store import ModelStore
    from pipeline.executor import PhaseExecutor
    from pipeline.state import BuildState

logger = logging.getLogger(__name__)

EXAMPLES = 3  # example rows or refs kept per failure reason for the summary
PIPELINE_VERSION = 2  # bump when an output format changes, so old checkpoints are redone


@dataclass
class PipelineContext:
    """What every phase gets: settings, the model's spec and paths, the model's store and build state
    (opened on first use), a lazily loaded encoder, and the executor its per-item work runs on (``executor``)."""

    settings: Settings
    spec: ModelSpec
    progress: bool = True
    drop_api_edits: bool = False
    _encoder: ClipEncoder | None = field(default=None, repr=False)
    _store: ModelStore | None = field(default=None, repr=False)
    _state: BuildState | None = field(default=None, repr=False)
    _executor: PhaseExecutor | None = field(default=None, repr=False)

    @property
    def paths(self) -> ModelPaths:
        return self.spec.paths(self.settings)

    @property
    def model(self) -> str:
        return self.spec.name

    @property
    def backbone(self) -> str:
        return self.spec.backbone_for(self.settings)

    def encoder(self) -> ClipEncoder:
        if self._encoder is None:
            from core.encoder import ClipEncoder

            self._encoder = ClipEncoder.from_settings(self.settings, self.backbone)
        return self._encoder

    def store(self) -> ModelStore:
        """The model's catalogue store (its index is not opened: the index phase does that)."""
        if self._store is None:
            from core.catalogue_store import open_store

            self._store = open_store(self.settings, self.spec, open_index=False)
            self._store.text_encoder = self._encode_texts  # calibration fits its text map with titles
        return self._store

    def _encode_texts(self, texts: Sequence[str]) -> Embeddings:
        return self.encoder().encode_texts(texts)

    def state(self) -> BuildState:
        if self._state is None:
            from pipeline.state import BuildState

            self._state = BuildState.of(self.store())
        return self._state

    def executor(self) -> PhaseExecutor:
        """The executor the settings name (IMAGESEARCH_EXECUTOR); Ray's starts or joins Ray on its first work."""
        if self._executor is None:
            if self.settings.executor == Executor.RAY:
                from pipeline.ray_executor import RayExecutor

                self._executor = RayExecutor(self.settings)
            else:
                from pipeline.local_executor import LocalExecutor

                self._executor = LocalExecutor(self.settings)
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()
            self._executor = None
        if self._state is not None:
            self._state.close()
            self._state = None
        if self._store is not None:
            self._store.close()
            self._store = None


@dataclass
class PhaseResult:
    """Counts for the summary. ``complete=False`` (e.g. transient download failures) means the
    phase is not checkpointed as done, so a rerun retries what failed (and reuses what worked).
    ``examples`` holds, per failure reason, the first few rows or refs that failed for it."""

    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    details: dict[str, Any] = field(default_factory=dict)
    complete: bool = True
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def num_failed(self) -> int:
        return sum(self.failed.values())

    def example(self, reason: str, text: str, limit: int = EXAMPLES) -> None:
        """Keep ``text`` as an example of ``reason`` while fewer than ``limit`` are kept."""
        kept = self.examples.setdefault(reason, [])
        if len(kept) < limit:
            kept.append(text[:300])


class NothingUsableError(NoUsableProductsError):
    """Nothing is left to index; carries what the phase counted before it stopped (failures by reason,
    examples), so the run's summary can still say why."""

    def __init__(self, model: str, message: str, partial: PhaseResult) -> None:
        super().__init__(model, message)
        self.partial = partial


class Phase(Protocol):
    """One step of the pipeline. Phases hand data on through the model's build state (staged rows, fetched
    images, view vectors), its image cache and its catalogue store, never through globals."""

    name: PhaseName

    def fingerprint(self, ctx: PipelineContext) -> dict[str, Any]:
        """Everything the phase's output depends on (input hashes, settings, backbone)."""

    def outputs(self, ctx: PipelineContext) -> list[Path]:
        """Files that must exist for a matching checkpoint to be trusted."""

    def run(self, ctx: PipelineContext) -> PhaseResult: ...


def digest(obj: Any) -> str:
    """Stable sha256 of a JSON-able object."""
    blob = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()


def file_digest(path: Path) -> str | None:
    """sha256 of a file's bytes, or None when it does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    return sha256_file(path)


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_report(path: Path, report: dict[str, Any]) -> None:
    """A report or checkpoint, atomically, with the credentials of any URL it quotes replaced."""
    write_json_atomic(path, redact_json(report))


def write_checkpoint(path: Path, phase: PhaseName, fingerprint: str, result: PhaseResult, seconds: float) -> None:
    """The marker is written last, atomically: the phase is done exactly when it exists and matches."""
    write_report(path, {
        "phase": phase.value,
        "fingerprint": fingerprint,
        "completed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "ok": result.ok,
        "failed": dict(result.failed),
        "details": result.details,
        "examples": result.examples,
    })
