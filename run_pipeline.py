"""Run pipeline phases for one model or every model: python run_pipeline.py --mode data|ml|all [--model M]."""

from __future__ import annotations

import argparse
import logging
import sys

from core.config import load_settings
from core.errors import ImageSearchError, disk_full
from core.model_config import ModelRegistry
from utils.logging_setup import setup_logging

logger = logging.getLogger("run_pipeline")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the four-phase pipeline (validation, download, extraction, "
                                                 "index) for one model or for every model that has a products.csv.")
    parser.add_argument("--mode", choices=["data", "ml", "all"], default="all",
                        help="data = validate + download, ml = embed + index, all = both (default)")
    parser.add_argument("--model", help="only this model (default: every model with data/<model>/products.csv)")
    parser.add_argument("--force", action="store_true", help="rerun phases even when up to date")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ImageSearchError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    setup_logging(settings.logs_dir, "pipeline.log", console_level=logging.CRITICAL)
    try:
        registry = ModelRegistry.discover(settings)
        specs = [registry.get(args.model)] if args.model else [s for s in registry if s.paths(settings).csv.is_file()]
    except ImageSearchError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    if not specs:
        print(f"error: no model has a products.csv under {settings.data_dir}", file=sys.stderr)
        return 1
    from pipeline.report import format_summary
    from pipeline.runner import PhaseOutcome, run_model

    failures = 0
    for spec in specs:
        outcomes: list[PhaseOutcome] = []
        try:
            run_model(settings, spec, mode=args.mode, force=args.force, progress=not args.no_progress,
                      outcomes=outcomes)
        except (ImageSearchError, OSError) as exc:
            error = exc if isinstance(exc, ImageSearchError) else disk_full(exc, spec.name)
            if error is None:
                raise
            failures += 1
            logger.error("%s", error.message)
            print(f"error: {error.message}", file=sys.stderr)
        if outcomes:
            print(format_summary(spec, settings, outcomes) + "\n", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    from utils.redact import redact_console

    redact_console()  # whatever it prints, no URL credentials (utils/redact.py)
    sys.exit(main())
