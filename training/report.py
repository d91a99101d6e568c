"""Quality reports: evaluation.json sections, plain-text tables and the per-category chart."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from utils.atomic import read_json, write_json_atomic

logger = logging.getLogger(__name__)

EVALUATION_FILE = "evaluation.json"


def update_results(path: Path, updates: dict[str, Any]) -> dict[str, Any]:
    """Merge ``updates`` into the JSON object at ``path`` (written atomically); other keys are kept,
    so evaluation and fine-tuning each own their part of one evaluation.json."""
    current: dict[str, Any] = {}
    if Path(path).is_file():
        try:
            loaded = read_json(path)
            current = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            logger.warning("%s unreadable; starting a fresh one", path)
    current.update(updates)
    write_json_atomic(path, current)
    return current


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A left-aligned first column and right-aligned others, separated by two spaces."""
    cells = [[str(h) for h in headers]] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def plot_category_precision(per_category: dict[str, dict], path: Path, *, title: str) -> Path | None:
    """Horizontal bar chart of precision@5 per category (worst at the bottom); None when nothing to plot."""
    rows = sorted(((name, row["precision_at_5"]) for name, row in per_category.items()
                   if row.get("precision_at_5") is not None), key=lambda r: (r[1], r[0]))
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.3 * len(rows) + 1)))
    try:
        ax.barh([r[0] for r in rows], [r[1] for r in rows], color="#4c72b0")
        ax.set_xlim(0, 1)
        ax.set_xlabel("precision@5")
        ax.set_title(title)
        save_png(fig, path)
    finally:
        plt.close(fig)
    return path


def save_png(fig: Any, path: Path) -> None:
    """Write a matplotlib figure as PNG atomically (a temp name, then renamed into place)."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    tmp.replace(path)


def format_evaluation(result: dict[str, Any]) -> str:
    """Summary, per-category table (worst first), robustness and notes of ``run_evaluation``."""
    lines = [f"Evaluation of {result['model']!r}: {result['num_products']} products, "
             f"{result['num_categories']} categories, {result['queries']} scored queries "
             f"({result['unscorable']} unscorable: alone in their category or uncategorised)"]
    keys = ("precision_at_1", "precision_at_5", "precision_at_10", "mrr", "map_at_10")
    lines += ["", table(["metric", "value"], [(k, result.get(k)) for k in keys])]
    per_cat = result.get("per_category") or {}
    if per_cat:
        ordered = sorted(per_cat.items(), key=lambda kv: (kv[1]["precision_at_5"] is None,
                                                          kv[1]["precision_at_5"] or 0.0, kv[0]))
        rows = [(name, r["products"], r["queries"], r["precision_at_1"], r["precision_at_5"], r["mrr"],
                 r["map_at_10"]) for name, r in ordered]
        lines += ["", table(["category", "products", "queries", "p@1", "p@5", "mrr", "map@10"], rows)]
        lines.append("worst categories (p@5): " + (", ".join(result.get("worst_categories", [])) or "-"))
    robust = result.get("robustness") or {}
    if robust:
        robust_rows = [(name, value) for name, value in robust.items() if name not in ("queries", "k")]
        lines += ["", f"Robustness: own product in the top {robust['k']} ({robust['queries']} queries)",
                  table(["query image", "found"], robust_rows)]
    lines += [f"note: {n}" for n in result.get("notes", [])]
    if result.get("chart"):
        lines.append(f"chart: {result['chart']}")
    return "\n".join(lines)


def format_bench(result: dict[str, Any]) -> str:
    """Table of ``run_index_bench`` results plus the recommendation (a skipped type says why)."""
    rows, skipped = [], []
    for name, r in result["results"].items():
        if "skipped" in r:
            skipped.append(f"{name}: skipped, {r['skipped']}")
            continue
        params = ", ".join(f"{k}={v}" for k, v in (r.get("params") or {}).items()) or "-"
        rows.append((name, params, r["recall_at_10"], r["latency_ms_median"], r["latency_ms_p95"],
                     r["build_seconds"], f"{r['memory_bytes'] / 1e6:.1f} MB"))
    head = (f"Index benchmark on {result['num_vectors']} {result['source']} vectors (dim {result['dim']}), "
            f"{result['queries']} single queries on one FAISS thread, recall@10 against exact search")
    headers = ["index", "tuned", "recall@10", "median ms", "p95 ms", "build s", "memory"]
    return "\n".join([head, "", table(headers, rows), *skipped, "",
                      f"recommended: {result['recommended']} ({result['reason']})"])


def format_finetune(result: dict[str, Any]) -> str:
    """Before/after figures and the adoption decision of ``run_finetune``."""
    split = result["split"]
    lines = [f"Fine-tuning {result['model']!r}: {result['head_kind']} head, margin {result['margin']}, "
             f"{result['epochs_run']} epochs (best {result['best_epoch']}, val loss "
             f"{fmt(result['best_val_loss'], 4)}), split train/val/test {split['train']}/{split['val']}/"
             f"{split['test']}, {result['seconds']}s on {result['device']}", ""]
    base, tuned = result["baseline"], result["tuned"]
    rows = [(k, base.get(k), tuned.get(k)) for k in ("map_at_10", "precision_at_1", "precision_at_5", "mrr")]
    lines.append(table(["test metric", "zero-shot", "fine-tuned"], rows))
    verdict = "ADOPTED: embeddings and index rebuilt through the head" if result["adopted"] else "not adopted"
    lines += ["", f"{verdict} ({result['decision']})"]
    return "\n".join(lines)
