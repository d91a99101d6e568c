"""Train (build) one model's search index: python run_training.py <model> [--force] | --list | --evaluate ..."""

from __future__ import annotations

import argparse
import logging
import sys

from core.config import Settings, load_settings
from core.errors import ImageSearchError, UnknownModelError, disk_full
from core.model_config import ModelRegistry, ModelSpec
from core.types import StoreKind
from training.cli import add_quality_arguments, run_quality_command, wants_quality_command
from utils.logging_setup import setup_logging

logger = logging.getLogger("run_training")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Validate data/<model>/products.csv, download images, embed them with CLIP and build "
                    "the model's FAISS index. Finished phases are skipped unless their inputs changed.")
    parser.add_argument("model", nargs="?", help="model name, e.g. general or shirts (see --list)")
    parser.add_argument("--list", action="store_true", help="list every model and its build state")
    parser.add_argument("--force", action="store_true", help="rerun every phase (the image cache is kept)")
    parser.add_argument("--drop-api-edits", action="store_true",
                        help="make products.csv the whole truth: drop products added or changed through the API")
    parser.add_argument("--mode", choices=["data", "ml", "all"], default="all",
                        help="data = validate + download, ml = embed + index, all = both (default)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--copy-store", choices=[k.value for k in StoreKind], metavar="local|milvus",
                        help="copy the built model into the other store (build state included) and check it: "
                             "counts and the same top-10 for sampled queries")
    add_quality_arguments(parser)
    return parser


def _get_model(registry: ModelRegistry, settings: Settings, name: str) -> ModelSpec:
    """The model's spec; an unknown name's error says where its CSV should go when one lies nearby."""
    try:
        return registry.get(name)
    except UnknownModelError as exc:
        from pipeline.hints import csv_location_hint

        raise UnknownModelError(exc.name, exc.available, hint=csv_location_hint(settings, name)) from None


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.list and not args.model:
        parser.error("give a model name, or --list")
    try:
        settings = load_settings()
    except ImageSearchError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    setup_logging(settings.logs_dir, "training.log", "pipeline.log", console_level=logging.CRITICAL)
    try:
        registry = ModelRegistry.discover(settings)
        from pipeline.report import format_model_list, format_summary

        if args.list:
            print(format_model_list(registry, settings))
            return 0
        spec = _get_model(registry, settings, args.model)
        if wants_quality_command(args):
            return run_quality_command(args, settings, spec)
        if args.copy_store:
            from pipeline.copy_store import copy_store

            report = copy_store(settings, spec, StoreKind(args.copy_store))
            print("\n".join(report.lines()), flush=True)
            return 0 if report.ok else 1
        from pipeline.runner import PhaseOutcome, run_model

        outcomes: list[PhaseOutcome] = []
        try:
            run_model(settings, spec, mode=args.mode, force=args.force, progress=not args.no_progress,
                      drop_api_edits=args.drop_api_edits, outcomes=outcomes)
        finally:  # the summary prints also when a phase stopped the run
            if outcomes:
                print(format_summary(spec, settings, outcomes), flush=True)
        return 0
    except ImageSearchError as exc:
        logger.error("%s", exc.message)
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        full = disk_full(exc, args.model or "")
        if full is None:
            raise
        logger.error("%s", full.message)
        print(f"error: {full.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    from utils.redact import redact_console

    redact_console()  # whatever it prints, no URL credentials (utils/redact.py)
    sys.exit(main())
