"""Human-readable summaries: the end-of-run phase table and the ``--list`` model overview."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from core.config import Settings
from core.model_config import ModelSpec
from pipeline.runner import PhaseOutcome
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
    details = [f"  {o.phase.value}: " + ", ".join(f"{k}={v}" for k, v in o.result.details.items())
               for o in outcomes if o.result.details]
    if details:
        lines += ["details:", *details]
    lines += [f"stopped: {o.error}" for o in outcomes if o.status.value == "failed" and o.error]
    lines += _next_steps(spec, settings, outcomes)
    paths = spec.paths(settings)
    reports = [p for p in (paths.models / "validation_report.json", paths.models / "download_report.json")
               if p.is_file()]
    if reports:
        lines.append("reports: " + ", ".join(str(p) for p in reports))
    extraction = next((o for o in outcomes if o.phase.value == "feature_extraction"), None)
    if extraction is not None and "api_kept" in extraction.result.details:
        d = extraction.result.details
        lines.append(f"products added or changed through the API: {d['api_kept']} kept, {d['api_dropped']} dropped")
    if (paths.models / "index.json").is_file() and outcomes and outcomes[-1].phase.value == "index_building" \
            and outcomes[-1].status.value != "failed":
        lines.append(f"index ready: {paths.models / 'catalogue.db'}; serve it with `python run_api.py`")
    return "\n".join(lines)


def _failures(outcomes: list[PhaseOutcome]) -> list[str]:
    """Each phase's failures by reason, most frequent first, each with its first few rows or refs."""
    lines: list[str] = []
    for o in outcomes:
        for reason, n in o.result.failed.most_common():
            lines.append(f"  {o.phase.value}: {reason} x{n}")
            lines += [f"      e.g. {example}" for example in o.result.examples.get(reason, [])[:3]]
    return ["failed by reason (with up to 3 examples each):", *lines] if lines else []


def _next_steps(spec: ModelSpec, settings: Settings, outcomes: list[PhaseOutcome]) -> list[str]:
    download = next((o for o in outcomes if o.phase.value == "image_download"), None)
    lines: list[str] = []
    if any(o.status.value == "incomplete" for o in outcomes):
        lines.append("some downloads failed for transient reasons (timeouts, 5xx): run again to retry them")
    if download is None or not download.result.failed:
        return lines
    d = download.result.details
    if d.get("failed_local", 0):
        lines.append(f"local image paths are relative to {spec.paths(settings).data}: fix the paths or copy the "
                     "images there, then run the same command again (only the images that failed are retried)")
    if d.get("failed_remote", 0) > d.get("transient", 0):
        lines.append("remote images that failed for good (e.g. http 404) are fetched again when products.csv "
                     "changes, or with --force")
    return lines


def _model_row(spec: ModelSpec, settings: Settings) -> list[str]:
    """Counts straight from the model's catalogue database (no JSON loaded, no store created)."""
    paths = spec.paths(settings)
    products = images = "-"
    indexed, built, kind = "no", "-", "-"
    db = paths.models / "catalogue.db"
    if db.is_file():
        products, images = _db_counts(db)
    try:
        info = read_json(paths.models / "index.json")
        indexed, built, kind = f"yes ({info['count']})", info["built_at"], info["kind"]
    except (OSError, ValueError, KeyError):
        pass
    csv = "yes" if paths.csv.is_file() else "no"
    return [spec.name, spec.display_name or spec.name, csv, products, images, indexed, kind, built]


def _db_counts(db: Path) -> tuple[str, str]:
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            products = conn.execute("SELECT count(*) FROM products").fetchone()[0]
            images = conn.execute("SELECT count(*) FROM images WHERE status='ok'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return "-", "-"
    return str(products), str(images)


def format_model_list(specs: Iterable[ModelSpec], settings: Settings) -> str:
    rows = [_model_row(s, settings) for s in specs]
    return _table(["model", "name", "csv", "products", "images cached", "indexed", "index", "built at"], rows)
