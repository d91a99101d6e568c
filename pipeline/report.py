"""Human-readable summaries: the end-of-run phase table and the ``--list`` model overview."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from core.config import Settings
from core.model_config import ModelSpec
from core.types import PhaseName, StoreKind
from pipeline.runner import PhaseOutcome
from utils.http_fetch import REFUSED_REASON
from utils.atomic import read_json


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([fmt(headers), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)])


def format_summary(spec: ModelSpec, settings: Settings, outcomes: list[PhaseOutcome]) -> str:
    """Phase table (status, ok, failed, seconds), failures by reason with up to three examples each,
    why the run stopped (if it did), what to do next, and where the reports are. Printed also for a
    run that stopped early, e.g. when no product had a usable image."""
    rows = [[o.phase.value, o.status.value, str(o.result.ok), str(o.result.num_failed), f"{o.seconds:.2f}"]
            for o in outcomes]
    lines = [f"model {spec.name}" + (f" ({spec.display_name})" if spec.display_name else ""),
             _table(["phase", "status", "ok", "failed", "seconds"], rows)]
    lines += _failures(outcomes)
    details = [f"  {o.phase.value}: " + ", ".join(f"{k}={v}" for k, v in o.result.details.items() if k != "executor")
               for o in outcomes if o.result.details]
    if details:
        lines += ["details:", *details]
    lines.append(f"executor: {_executor(settings, outcomes)}")  # why a run stopped: the CLI's one error line
    lines += _next_steps(spec, settings, outcomes)
    paths = spec.paths(settings)
    reports = [p for p in (paths.models / "validation_report.json", paths.models / "download_report.json")
               if p.is_file()]
    if reports:
        lines.append("reports: " + ", ".join(str(p) for p in reports))
    extraction = next((o for o in outcomes if o.phase.value == "feature_extraction"), None)
    if extraction is not None and "api_kept" in extraction.result.details:
        d = extraction.result.details
        lines.append(f"products added or changed through the API: {d['api_kept']} kept, {d['api_dropped']} dropped; "
                     f"CSV products deleted through the API: {d.get('api_deletes_kept', 0)} kept deleted")
    if (paths.models / "index.json").is_file() and outcomes and outcomes[-1].phase.value == "index_building" \
            and outcomes[-1].status.value != "failed":
        lines.append(f"index ready: {_where(spec, settings)}; serve it with `python run_api.py`")
    return "\n".join(lines)


def _where(spec: ModelSpec, settings: Settings) -> str:
    """Where the model's catalogue lives: its database file, or its Milvus collection (no credentials)."""
    if spec.store_for(settings) != StoreKind.MILVUS:
        return str(spec.paths(settings).models / "catalogue.db")
    from core.milvus_client import collection_name, redacted_uri

    return f"Milvus collection {collection_name(settings.milvus_prefix, spec.name)} at {redacted_uri(settings)}"


def _executor(settings: Settings, outcomes: list[PhaseOutcome]) -> str:
    """Where this run's downloads and embeddings ran: the Ray cluster a phase of this run used, or the setting."""
    used = [o.result.details["executor"] for o in outcomes
            if o.status.value in ("ran", "incomplete", "failed") and "executor" in o.result.details]
    return str(used[0]) if used else settings.executor.value


def _failures(outcomes: list[PhaseOutcome]) -> list[str]:
    """Each phase's failures by reason, most frequent first, each with its first few rows or refs."""
    lines: list[str] = []
    for o in outcomes:
        for reason, n in o.result.failed.most_common():
            lines.append(f"  {o.phase.value}: {reason} x{n}")
            lines += [f"      e.g. {example}" for example in o.result.examples.get(reason, [])[:3]]
    return ["failed by reason (with up to 3 examples each):", *lines] if lines else []


_PATH_REASONS = ("file not found", "not a file", "unreadable file", "bad path", "path escapes model folder")
_SHAPE_REASONS = ("too many pixels", "extreme aspect ratio", "side too long")


def _next_steps(spec: ModelSpec, settings: Settings, outcomes: list[PhaseOutcome]) -> list[str]:
    download = next((o for o in outcomes if o.phase.value == "image_download"), None)
    lines: list[str] = []
    if any(o.status.value == "incomplete" for o in outcomes):
        lines.append("some downloads failed for transient reasons (timeouts, 5xx): run again to retry them")
    if download is None or not download.result.failed:
        return lines
    d, failed = download.result.details, download.result.failed
    if failed.get(REFUSED_REASON):
        lines.append("images on loopback or private addresses (127.0.0.1, an intranet) are refused: name their hosts "
                     "or networks in IMAGESEARCH_FETCH_ALLOWLIST (e.g. images.internal,10.8.0.0/16), or set "
                     "IMAGESEARCH_ALLOW_PRIVATE_URLS=1 on a development machine, then run the same command again")
    if d.get("failed_local", 0) and any(failed[r] for r in _PATH_REASONS):
        lines.append(f"local image paths are relative to {spec.paths(settings).data}: fix the paths or copy the "
                     "images there, then run the same command again (only the images that failed are retried)")
    if any(failed[r] for r in _SHAPE_REASONS):
        lines.append("images refused for their shape (pixels, aspect ratio or side length): replace them, or raise "
                     "IMAGESEARCH_MAX_IMAGE_PIXELS / IMAGESEARCH_MAX_ASPECT_RATIO and run again")
    if d.get("failed_remote", 0) > d.get("transient", 0):
        lines.append("remote images that failed for good (e.g. http 404) are fetched again when products.csv "
                     "changes, or with --force")
    return lines


MODEL_LIST_COLUMNS = ("model", "name", "csv", "products", "images cached", "failed", "indexed", "index", "backbone",
                      "built at")


def model_row(spec: ModelSpec, settings: Settings) -> list[str]:
    """The model's ``--list`` row (``MODEL_LIST_COLUMNS``): counts straight from the model's catalogue database,
    opened read-only (no store created); for a model in Milvus, the images from the build state and the products
    from its collection."""
    paths = spec.paths(settings)
    products = images = failed_images = "-"
    indexed, built, kind = "not built", "-", "-"
    milvus = spec.store_for(settings) == StoreKind.MILVUS
    db = paths.models / ("build.db" if milvus else "catalogue.db")
    if db.is_file():
        products, images, failed_images = _db_counts(db, products=not milvus)
    if milvus:
        products = _milvus_count(spec, settings)
    try:
        info = read_json(paths.models / "index.json")
        indexed, built, kind = f"yes ({info['count']})", info["built_at"], info["kind"]
        if milvus:
            products, kind = str(info["count"]), f"milvus {info['kind']}"  # as of the last build
    except (OSError, ValueError, KeyError):
        pass
    rows = _rejected_rows(paths.checkpoint(PhaseName.VALIDATION))
    failed = "-" if rows == "-" and failed_images == "-" else f"{_n(rows, 'row')}, {_n(failed_images, 'image')}"
    return [spec.name, spec.display_name or spec.name, csv_state(spec, settings), products, images, failed,
            indexed, kind, _backbone(spec.backbone_for(settings)), built]


def _n(count: str, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == "1" else "s")


def csv_state(spec: ModelSpec, settings: Settings) -> str:
    """``no`` (no products.csv), ``new`` (never validated), ``changed`` (the CSV, or a setting the
    validation depends on, changed since the last build) or ``yes``."""
    from pipeline.base import PipelineContext, read_checkpoint
    from pipeline.runner import phase_fingerprint
    from pipeline.validation import ValidationPhase

    paths = spec.paths(settings)
    if not paths.csv.is_file():
        return "no"
    checkpoint = read_checkpoint(paths.checkpoint(PhaseName.VALIDATION))
    if checkpoint is None:
        return "new"
    ctx = PipelineContext(settings=settings, spec=spec, progress=False)  # the fingerprint opens no store
    return "yes" if checkpoint.get("fingerprint") == phase_fingerprint(ValidationPhase(), ctx) else "changed"


def _rejected_rows(checkpoint_path: Path) -> str:
    from pipeline.base import read_checkpoint

    checkpoint = read_checkpoint(checkpoint_path)
    if checkpoint is None:
        return "-"
    failed = checkpoint.get("failed") or {}
    return str(sum(n for reason, n in failed.items() if not reason.startswith("image: ")))


def _backbone(backbone: str) -> str:
    """A hub name as is; a local folder by its name."""
    path = Path(backbone).expanduser()
    return path.name if path.is_absolute() or path.is_dir() else backbone


def _milvus_count(spec: ModelSpec, settings: Settings) -> str:
    """Products in the model's Milvus collection; "-" when it has none or Milvus cannot say (a listing
    never stops on an unreachable Milvus)."""
    from pymilvus.exceptions import MilvusException

    from core.errors import ImageSearchError
    from core.milvus_client import client, milvus_uri, resolve_collection

    if not re.match(r"^[a-z]+://", milvus_uri(settings)) and not Path(milvus_uri(settings)).exists():
        return "-"  # no milvus-lite file yet: nothing to count, and opening it would create one
    try:
        name = resolve_collection(settings, spec.name)
        found = client(settings)
        if not found.has_collection(name):
            return "-"
        rows = found.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
    except (ImageSearchError, MilvusException):
        return "-"
    return str(rows[0]["count(*)"]) if rows else "-"


def _db_counts(db: Path, *, products: bool = True) -> tuple[str, str, str]:
    """(products, images cached, images failed) of the staged products; "-" for what is not there
    (products too when ``products`` is false: the build state of a catalogue kept elsewhere)."""
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            count = conn.execute("SELECT count(*) FROM products").fetchone()[0] if products else "-"
            images = conn.execute("SELECT count(*) FROM images WHERE status='ok'").fetchone()[0]
            failed = conn.execute(
                "SELECT count(*) FROM images WHERE status='failed' AND ref IN (SELECT value FROM csv_products, "
                "json_each(csv_products.images) UNION SELECT preview_image FROM csv_products)").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return "-", "-", "-"
    return str(count), str(images), str(failed)


CSV_LEGEND = ("csv: yes = built from the current products.csv, changed = edited since the last build, "
              "new = never built, no = no products.csv")


def format_model_list(specs: Iterable[ModelSpec], settings: Settings) -> str:
    """One row per model, what the csv column means, then a line per model that needs something: why its
    last build stopped (and, while the CSV is the same, to fix that first), or that its CSV is new or changed."""
    specs = list(specs)
    rows = [model_row(s, settings) for s in specs]
    table = _table(list(MODEL_LIST_COLUMNS), rows)
    notes = [_note(spec, settings, row[2]) for spec, row in zip(specs, rows, strict=True)]
    return "\n".join([table, CSV_LEGEND, *(n for n in notes if n)])


def _note(spec: ModelSpec, settings: Settings, csv: str) -> str:
    from pipeline.base import file_digest, read_checkpoint
    from pipeline.runner import failure_path

    rerun = f"`python run_training.py {spec.name}`"
    paths = spec.paths(settings)
    failure = read_checkpoint(failure_path(paths.checkpoints))
    if failure and failure.get("error"):
        where = f" in {failure['phase']}" if failure.get("phase") else ""
        stopped = f"{spec.name}: the last build stopped{where}: {failure['error']}"
        if failure.get("csv") == file_digest(paths.csv):  # the same input: the same run would stop the same way
            return f"{stopped}; fix that, then run {rerun}"
        return f"{stopped}; products.csv changed since: run {rerun}"
    if csv == "changed":
        return f"{spec.name}: CSV changed since the last build; run {rerun}"
    if csv == "new":
        return f"{spec.name}: not built yet; run {rerun}"
    return ""
