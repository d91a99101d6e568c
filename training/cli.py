"""Command-line options of the quality tools (--evaluate, --bench-index, --finetune) for run_training.py."""

from __future__ import annotations

import argparse
import logging

from core.config import Settings
from core.errors import ConfigError
from core.model_config import ModelSpec

logger = logging.getLogger(__name__)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value <= 2:
        raise argparse.ArgumentTypeError(f"must be in (0, 2] (a distance between unit vectors), got {text}")
    return value


def add_quality_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the quality options to ``parser`` (they need a model that has been built)."""
    group = parser.add_argument_group("quality (on a built model)")
    group.add_argument("--evaluate", action="store_true",
                       help="precision@1/5/10, MRR, mAP@10 per category and robustness to perturbed queries; "
                            "writes models/<model>/evaluation.json and a chart")
    group.add_argument("--bench-index", action="store_true",
                       help="compare flat, hnsw, ivf, ivfsq and ivfpq, each tuned as a build would (recall@10, "
                            "latency, build time, size) and recommend what index_type=auto picks")
    group.add_argument("--size", type=_positive_int, metavar="N",
                       help="with --bench-index: benchmark N synthetic vectors instead of the model's")
    group.add_argument("--finetune", action="store_true",
                       help="train a projection head; adopt it only if it beats zero-shot test mAP@10")
    group.add_argument("--duplicates", action="store_true",
                       help="group near-duplicate products (the same photo under several ids) into "
                            "models/<model>/duplicates.json and print the largest groups")
    group.add_argument("--margin", type=_positive_float, help="with --finetune: triplet margin (default 0.2)")
    group.add_argument("--head", choices=["linear", "mlp"], help="with --finetune: head kind (default linear)")


def wants_quality_command(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "evaluate", False) or getattr(args, "bench_index", False)
                or getattr(args, "finetune", False) or getattr(args, "duplicates", False))


def _check_combination(args: argparse.Namespace) -> None:
    if args.size is not None and not args.bench_index:
        raise ConfigError("--size only applies to --bench-index")
    if (args.margin is not None or args.head is not None) and not args.finetune:
        raise ConfigError("--margin and --head only apply to --finetune")


def run_quality_command(args: argparse.Namespace, settings: Settings, spec: ModelSpec) -> int:
    """Run the requested tools in order fine-tune, evaluate, benchmark (so an evaluation sees a newly
    adopted head) and print each summary. Typed errors propagate to the caller's handler."""
    _check_combination(args)
    progress = not getattr(args, "no_progress", False)
    if args.finetune:
        from training.finetune import run_finetune
        from training.report import format_finetune

        overrides = {k: v for k, v in (("finetune_margin", args.margin), ("finetune_head", args.head)) if v is not None}
        print(format_finetune(run_finetune(settings.model_copy(update=overrides), spec, progress=progress)))
    if args.evaluate:
        from training.evaluate import run_evaluation
        from training.report import format_evaluation

        print(format_evaluation(run_evaluation(settings, spec, progress=progress)))
    if getattr(args, "duplicates", False):
        from training.duplicates import find_duplicates, format_duplicates

        print(format_duplicates(find_duplicates(settings, spec)))
    if args.bench_index:
        from training.index_bench import run_index_bench
        from training.report import format_bench

        print(format_bench(run_index_bench(settings, spec, size=args.size, progress=progress)))
    return 0
