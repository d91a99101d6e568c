"""Phase 1: read and validate products.csv into the build state's staged rows, plus a per-row report."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from core.errors import MissingInputError
from core.types import PhaseName
from pipeline.base import PhaseResult, PipelineContext, digest, file_digest, write_report
from pipeline.state import StagedProduct
from pipeline.csv_reader import (DELIMITERS, ImageListError, RawRow, decode_csv, detect_delimiter, parse_image_list,
                                 read_rows)
from utils.redact import escape_control

logger = logging.getLogger(__name__)

_BATCH = 5000
REPORT_EXAMPLES = 1000  # rows listed in validation_report.json per kind; the counts cover every row


def check_ref(ref: str) -> str | None:
    """None if ``ref`` is an http(s) URL or a relative path inside the model folder, else the reason."""
    parts = urlsplit(ref)
    if parts.scheme.lower() in ("http", "https"):
        return None if parts.hostname else "URL has no host"
    if len(parts.scheme) > 1:
        return f"unsupported URL scheme '{parts.scheme.lower()}'"
    if ref.startswith(("/", "\\")) or len(parts.scheme) == 1:
        return "absolute paths are not allowed"
    if ".." in PurePosixPath(ref.replace("\\", "/")).parts:
        return "path escapes the model folder"
    return None


@dataclass
class _Report:
    """Counts of every rejection and warning, with the first REPORT_EXAMPLES of each kept as examples."""

    rejected: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    image_rejects: list[dict[str, Any]] = field(default_factory=list)
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    image_rejects_by_reason: Counter[str] = field(default_factory=Counter)
    num_warnings: int = 0

    def reject(self, row: RawRow, reason: str, detail: str = "") -> None:
        self.rejected_by_reason[reason] += 1
        if len(self.rejected) < REPORT_EXAMPLES:
            self.rejected.append({"row": row.line, "id": _shown(row.fields.get("id", "")), "reason": reason,
                                  "detail": _shown(detail)})

    def warn(self, row: RawRow, message: str) -> None:
        self.num_warnings += 1
        if len(self.warnings) < REPORT_EXAMPLES:
            self.warnings.append({"row": row.line, "id": _shown(row.fields.get("id", "")),
                                  "message": _shown(message)})

    def reject_image(self, row: RawRow, ref: str, reason: str) -> None:
        self.image_rejects_by_reason[reason] += 1
        if len(self.image_rejects) < REPORT_EXAMPLES:
            self.image_rejects.append({"row": row.line, "id": _shown(row.fields.get("id", "")), "ref": _shown(ref),
                                       "reason": reason})


def _shown(text: str) -> str:
    """A CSV value as the report shows it: bounded, control characters and undecodable bytes escaped
    (a lone surrogate cannot even be written as UTF-8)."""
    return escape_control(text[:300])



def _refs(row: RawRow, report: _Report) -> list[str] | None:
    """The row's valid image refs, or None if the images cell is unreadable (row rejected)."""
    try:
        refs = parse_image_list(row.fields["images"]) if "images" in row.fields else list(row.images)
    except ImageListError as exc:
        report.reject(row, str(exc), row.fields.get("images", "")[:200])
        return None
    good: list[str] = []
    for ref in dict.fromkeys(refs):
        reason = check_ref(ref)
        if reason:
            report.reject_image(row, ref, reason)
        else:
            good.append(ref)
    return good


def _product(row: RawRow, report: _Report, max_images: int) -> StagedProduct | None:
    if row.problem:
        report.reject(row, row.problem, row.problem_detail)
        return None
    if row.bad_encoding:
        report.reject(row, "non-UTF-8 bytes", f"column {row.bad_encoding}")
        return None
    pid, title = row.fields.get("id", ""), row.fields.get("title", "")
    if not pid or not title:
        report.reject(row, "empty id" if not pid else "empty title")
        return None
    views = _refs(row, report)
    if views is None:
        return None
    preview = row.fields.get("preview_image", "")
    preview = preview if preview and not check_ref(preview) else ""
    if len(views) > max_images:
        report.warn(row, f"{len(views)} images, kept the first {max_images}")
        views = views[:max_images]
    views = views or ([preview] if preview else [])
    if not views:
        report.reject(row, "no usable image")
        return None
    return StagedProduct(id=pid, row=row.line, title=title, category=row.fields.get("category", ""), images=views,
                         preview_image=preview or views[0], extra=dict(row.extra))


class ValidationPhase:
    name = PhaseName.VALIDATION

    def fingerprint(self, ctx: PipelineContext) -> dict[str, Any]:
        return {"csv": file_digest(ctx.paths.csv), "max_images": ctx.settings.max_images_per_product,
                "shopify_include_inactive": ctx.settings.shopify_include_inactive}

    def outputs(self, ctx: PipelineContext) -> list[Path]:
        return [ctx.paths.models / "validation_report.json"]

    def run(self, ctx: PipelineContext) -> PhaseResult:
        if not ctx.paths.csv.is_file():
            from pipeline.hints import csv_location_hint

            hint = csv_location_hint(ctx.settings, ctx.model)
            raise MissingInputError(ctx.model, f"no products.csv at {ctx.paths.csv}" + (f"; {hint}" if hint else ""))
        text, encoding = decode_csv(ctx.paths.csv.read_bytes())
        delimiter = detect_delimiter(text)
        report = _Report()
        state = ctx.state()
        rows = 0
        with state.db.write() as conn:  # the staged rows are replaced whole, or not at all
            state.replace_staged(conn)
            batch: dict[str, StagedProduct] = {}
            for row in read_rows(text, ctx.model, delimiter=delimiter,
                                 include_inactive=ctx.settings.shopify_include_inactive):
                rows += 1
                product = _product(row, report, ctx.settings.max_images_per_product)
                if product is None:
                    continue
                first = batch[product.id].row if product.id in batch else state.previous_row(conn, product.id)
                if first is not None:
                    report.warn(row, f"duplicate id {product.id!r} (first seen on row {first}): this later row wins")
                    batch.pop(product.id, None)
                batch[product.id] = product
                if len(batch) >= _BATCH:
                    state.stage(conn, list(batch.values()))
                    batch = {}
            state.stage(conn, list(batch.values()))
            state.set_meta(conn, "staged", digest(self.fingerprint(ctx)))
            accepted = int(conn.execute("SELECT count(*) FROM csv_products").fetchone()[0])
        return self._write(ctx, accepted, report, rows, encoding, DELIMITERS[delimiter])

    def _write(self, ctx: PipelineContext, accepted: int, report: _Report, rows: int, encoding: str,
               delimiter: str) -> PhaseResult:
        failed = Counter(report.rejected_by_reason)
        write_report(ctx.paths.models / "validation_report.json", {
            "model": ctx.model, "encoding": encoding, "delimiter": delimiter, "rows": rows, "accepted": accepted,
            "rejected_by_reason": dict(failed), "rejected": report.rejected[:REPORT_EXAMPLES],
            "warnings": report.warnings[:REPORT_EXAMPLES], "image_rejects": report.image_rejects[:REPORT_EXAMPLES],
            "listed": f"at most {REPORT_EXAMPLES} entries of each list; the counts cover every row"})
        for r in report.rejected[:REPORT_EXAMPLES]:
            logger.warning("%s: row %d rejected: %s %s", ctx.model, r["row"], r["reason"], r["detail"])
        for w in report.warnings[:REPORT_EXAMPLES]:
            logger.warning("%s: row %d: %s", ctx.model, w["row"], w["message"])
        details = {"rows": rows, "warnings": report.num_warnings,
                   "images_rejected": sum(report.image_rejects_by_reason.values()),
                   "encoding": encoding, "delimiter": delimiter}
        failed.update({f"image: {reason}": n for reason, n in report.image_rejects_by_reason.items()})
        result = PhaseResult(ok=accepted, failed=failed, details=details)
        for r in report.rejected:
            shown = f"row {r['row']}" + (f": {r['id']}" if r["id"] else "")
            shown += f" ({r['detail']})" if r["detail"] else ""
            result.example(r["reason"], shown)
        for r in report.image_rejects:
            result.example(f"image: {r['reason']}", f"row {r['row']}: {r['ref']}")
        return result
