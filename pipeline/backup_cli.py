"""Command-line options of backups and restores (--backup, --all, --restore, --as, --store) for run_training.py."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.config import Settings
from core.errors import ConfigError, ImageSearchError
from core.model_config import ModelRegistry
from core.types import StoreKind


def add_backup_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("operations (while the API serves the model)")
    group.add_argument("--backup", nargs="?", const="", metavar="DIR",
                       help="write a consistent backup of the model (catalogue, index, calibration, head, model.json, "
                            "products.csv, a manifest with checksums) into DIR/<model>-<time>/ (default DIR: "
                            "IMAGESEARCH_BACKUP_DIR, else backups/)")
    group.add_argument("--all", action="store_true", help="with --backup: every model that has a catalogue")
    group.add_argument("--restore", metavar="DIR",
                       help="restore the backup in DIR (or, with a model name, that model's newest backup in DIR): "
                            "checksums first, then the model is replaced in one step")
    group.add_argument("--as", dest="as_name", metavar="NAME",
                       help="with --restore: restore as this model (a new one, or over an existing one)")
    group.add_argument("--store", choices=[k.value for k in StoreKind], metavar="local|milvus",
                       help="with --restore: the store to restore into (default: the backup's model.json, else "
                            "IMAGESEARCH_STORE); either store's backup restores into either")


def wants_backup_command(args: argparse.Namespace) -> bool:
    return args.backup is not None or args.restore is not None


def needs_model(args: argparse.Namespace) -> bool:
    """Whether the command needs a model name (a restore reads it from the backup; --all names every model)."""
    return args.restore is None and not (args.backup is not None and args.all)


def run_backup_command(args: argparse.Namespace, settings: Settings, registry: ModelRegistry) -> int:
    if args.backup is not None and args.restore is not None:
        raise ConfigError("--backup and --restore are separate commands: run one, then the other")
    if args.restore is None and (args.as_name or args.store):
        raise ConfigError("--as and --store only apply to --restore")
    if args.all and args.backup is None:
        raise ConfigError("--all only applies to --backup")
    if args.restore is not None:
        return _restore(args, settings)
    return _backup(args, settings, registry)


def _say(line: str) -> None:
    print(f"... {line}", flush=True)


def _restore(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.restore import restore_backup

    report = restore_backup(settings, Path(args.restore), model=args.model, name=args.as_name,
                            store=StoreKind(args.store) if args.store else None, say=_say)
    print("\n".join(report.lines()), flush=True)
    return 0


def _backup(args: argparse.Namespace, settings: Settings, registry: ModelRegistry) -> int:
    from core.catalogue_store import store_exists
    from pipeline.backup import backup_model

    root = Path(args.backup) if args.backup else None
    if not args.all:
        report = backup_model(settings, registry.get(args.model), root, say=_say)
        print("\n".join(report.lines()), flush=True)
        return 0
    failed = 0
    for spec in registry:
        try:
            if not store_exists(settings, spec):
                print(f"{spec.name}: skipped, not built yet", flush=True)
                continue
            print("\n".join(backup_model(settings, spec, root, say=_say).lines()), flush=True)
        except ImageSearchError as exc:  # one model's failure does not stop the others'
            failed += 1
            print(f"{spec.name}: error: {exc.message}", flush=True)
    return 1 if failed else 0
