"""``run_training.py <m> --backup [DIR]`` (and ``--all``; the API's ``POST /<m>/backups``): a consistent,
self-describing snapshot of a live model, taken while the API serves it and accepts edits.

A backup is one folder, ``<DIR>/<model>-<UTC time>/``, whatever the store:

- ``catalogue.db``: the catalogue in the local store's SQLite format. Local store: SQLite's online backup API
  copies the file a few thousand pages a step inside one read transaction, so it holds exactly one
  generation while writers go on (the pipeline's build state comes along: it lives in the same file). Milvus:
  the collection's rows and both vectors, streamed a batch at a time through the store protocol; the
  generation is read before and after, and the stream is taken again (twice at most) when a write landed
  meanwhile (Milvus has no transaction to read it in: ``consistent`` says whether one generation was caught).
- ``index-<generation>.faiss`` and ``index.json`` (local store: copied before the catalogue, so the index is
  never newer than it and catches up on load), ``calibration.json``, ``head.safetensors``, ``build.db``
  (Milvus: the build machine's state), ``model.json`` and ``products.csv`` (from ``data/<m>/``) where present;
- ``checkpoint-<phase>.json``: the pipeline's checkpoints (copied before the catalogue, which therefore holds
  at least the work they record), so the restored model's next build skips what is done;
- ``manifest.json``, written last: counts, generation, store, the project's version and every file's size and
  SHA-256. The folder is written as ``.<name>.partial`` and renamed when complete, so a listed backup is whole.

No file per product. The image cache is not included (it is re-fetched by the next build).
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.ann import INDEX_JSON
from core.calibration import CALIBRATION_JSON
from core.config import PROJECT_ROOT, Settings
from core.errors import BackupError, MissingInputError
from core.model_config import ModelPaths, ModelSpec
from core.sqlite_db import Database
from core.sqlite_store import SCHEMA, ProductTable, store_path
from core.store import ModelStore
from core.types import PhaseName, StoreKind
from utils.atomic import fsync_dir, fsync_file, sha256_file, write_json_atomic

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "imagesearch-backup"
FORMAT_VERSION = 1
CATALOGUE = "catalogue.db"
BUILD_DB = "build.db"
HEAD = "head.safetensors"
INPUTS = ("model.json", "products.csv")  # from data/<m>/
_ATTEMPTS = 3
CORRUPT = "checksum mismatch: the file is corrupt or was changed after the backup"
Say = Callable[[str], None]


def _quiet(_line: str) -> None:
    return None


@dataclass(frozen=True)
class BackupReport:
    model: str
    path: Path
    store: StoreKind
    generation: int
    products: int
    bytes: int
    seconds: float
    consistent: bool = True

    def lines(self) -> list[str]:
        caught = "" if self.consistent else (" - writes kept landing while it was read: each product is as of "
                                             "some moment during the backup")
        return [f"{self.model}: backed up {self.products} products (generation {self.generation}, {self.store} "
                f"store) to {self.path} in {self.seconds:.1f} s ({self.bytes / 1e6:.1f} MB){caught}",
                f"  restore it with: python run_training.py --restore {self.path} [--as NAME]"]


def project_version() -> str:
    try:
        with open(PROJECT_ROOT / "pyproject.toml", "rb") as fh:
            return str(tomllib.load(fh)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def backup_model(settings: Settings, spec: ModelSpec, root: Path | None = None, *, say: Say = _quiet) -> BackupReport:
    """Write a backup of ``spec``'s catalogue under ``root`` (default: the backups folder) and return what it
    holds. The model keeps serving and accepting edits meanwhile."""
    from core.catalogue_store import store_exists

    if not store_exists(settings, spec):
        raise MissingInputError(spec.name, f"no catalogue to back up; build it first (python run_training.py "
                                           f"{spec.name})")
    start = time.perf_counter()
    root = Path(root or settings.backups_dir)
    final = _new_name(root, spec.name)
    partial = root / f".{final.name}.partial"
    partial.mkdir(parents=True)
    try:
        kind = spec.store_for(settings)
        facts = _backup_local(settings, spec, partial, say) if kind == StoreKind.LOCAL else \
            _backup_milvus(settings, spec, partial, say)
        for name in INPUTS:
            source = spec.paths(settings).data / name
            if source.is_file():
                shutil.copyfile(source, partial / name)
        say("writing the manifest")
        manifest = _manifest(spec.name, kind, facts, partial)
        write_json_atomic(partial / MANIFEST, manifest)
        fsync_dir(partial)
        partial.rename(final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    report = BackupReport(spec.name, final, kind, facts["generation"], facts["products"],
                          sum(f["bytes"] for f in manifest["files"].values()), time.perf_counter() - start,
                          facts["consistent"])
    logger.info("%s", report.lines()[0])
    return report


def _new_name(root: Path, model: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path, n = root / f"{model}-{stamp}", 1
    while path.exists() or (root / f".{path.name}.partial").exists():
        n += 1
        path = root / f"{model}-{stamp}-{n}"
    return path


def _manifest(model: str, kind: StoreKind, facts: dict[str, Any], folder: Path) -> dict[str, Any]:
    files = {}
    for path in sorted(folder.iterdir()):
        fsync_file(path)
        files[path.name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "project_version": project_version(),
            "model": model, "store": kind.value, "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **facts, "files": files}


# --- the local store ---------------------------------------------------------------------------------
def _backup_local(settings: Settings, spec: ModelSpec, out: Path, say: Say) -> dict[str, Any]:
    folder = spec.paths(settings).models
    for attempt in range(_ATTEMPTS):
        copy_checkpoints(spec.paths(settings), out)
        say("copying the index")
        index_generation = _copy_index(folder, out)
        head = _copy_if_there(folder / HEAD, out)
        _copy_if_there(folder / CALIBRATION_JSON, out)
        say("copying the catalogue (SQLite online backup)")
        db = Database(store_path(folder), "", spec.name)  # no schema: a backup writes nothing to the live file
        try:
            facts = db.backup(out / CATALOGUE, _facts)
        finally:
            db.close()
        # a head adopted between the two copies: the files would disagree; take them again
        if facts["head"] == (sha256_file(head) if head else None):
            break
        logger.info("%s: the head changed during the backup (attempt %d); copying again", spec.name, attempt + 1)
        for path in out.iterdir():
            path.unlink()
    else:
        raise BackupError(folder / HEAD, "the head kept changing during the backup; retry once it is adopted")
    return {**facts, "consistent": True, "index_generation": index_generation}


def _facts(conn: sqlite3.Connection) -> dict[str, Any]:
    """What the manifest says of the catalogue, read in the backup's own snapshot."""
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    by_source = dict(conn.execute("SELECT source, count(*) FROM products GROUP BY source").fetchall())
    width = conn.execute("SELECT length(COALESCE(vector, clip)), length(clip) FROM products LIMIT 1").fetchone()
    return {"generation": int(meta.get("generation", 0)), "products": sum(by_source.values()),
            "by_source": by_source, "head": meta.get("head") or None,
            "dim": width[0] // 4 if width else None, "clip_dim": width[1] // 4 if width else None}


def _copy_index(folder: Path, out: Path) -> int | None:
    """index.json and the file it names; its generation (None when the model has no saved index). A save
    that replaces the file meanwhile is met by copying the new one."""
    for _ in range(5):
        try:
            raw = (folder / INDEX_JSON).read_bytes()
            name = str(json.loads(raw)["file"])
            shutil.copyfile(folder / name, out / name)  # open before a save unlinks it: the copy completes
        except FileNotFoundError:
            if not (folder / INDEX_JSON).is_file():
                return None
            continue
        except (ValueError, KeyError, TypeError):
            return None  # a damaged index.json: the restored model rebuilds its index, as this one would
        (out / INDEX_JSON).write_bytes(raw)
        return int(json.loads(raw).get("generation", 0))
    return None


def checkpoint_name(phase: PhaseName) -> str:
    return f"checkpoint-{phase.value}.json"


def copy_checkpoints(paths: ModelPaths, out: Path) -> None:
    for phase in PhaseName:
        if paths.checkpoint(phase).is_file():
            shutil.copyfile(paths.checkpoint(phase), out / checkpoint_name(phase))


def _copy_if_there(source: Path, out: Path) -> Path | None:
    if not source.is_file():
        return None
    shutil.copyfile(source, out / source.name)
    return out / source.name


# --- Milvus ------------------------------------------------------------------------------------------
def _backup_milvus(settings: Settings, spec: ModelSpec, out: Path, say: Say) -> dict[str, Any]:
    from core.catalogue_store import open_store

    store = open_store(settings, spec)  # serving mode: a head that does not fit stops the backup, never rewrites
    try:
        copy_checkpoints(spec.paths(settings), out)
        _copy_if_there(spec.paths(settings).models / HEAD, out)
        calibration = store.calibration
        if calibration is not None:
            write_json_atomic(out / CALIBRATION_JSON, calibration.to_json())
        if (store.folder / BUILD_DB).is_file():
            say("copying the build state (SQLite online backup)")
            build = Database(store.folder / BUILD_DB, "", store.name)
            try:
                build.backup(out / BUILD_DB, lambda _conn: None)
            finally:
                build.close()
        live = store.live_index
        index = live.info.to_json() if live is not None else {}
        for attempt in range(_ATTEMPTS):
            before = store.generation()
            say(f"streaming the collection's products (attempt {attempt + 1})")
            facts = _stream(store, out / CATALOGUE, before)
            after = store.generation()
            if after == before:
                break
            logger.info("%s: writes landed during the backup (generation %d -> %d)", spec.name, before, after)
            if attempt < _ATTEMPTS - 1:
                (out / CATALOGUE).unlink()
        return {**facts, "consistent": after == before, "generations": [before, after], "index": index}
    finally:
        store.close()


def _stream(store: ModelStore, path: Path, generation: int) -> dict[str, Any]:
    """The collection's products into a catalogue.db of the local store's schema, tagged ``generation``."""
    from pipeline.copy_store import product_batches

    db = Database(path, SCHEMA, store.name)
    table = ProductTable(db)
    try:
        for items in product_batches(store):
            with db.write() as conn:
                table.upsert(conn, generation, items, keep_api=False, keep_time=True)
        with db.write() as conn:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(generation),))
            table.set_head(conn, store.head.sha256 if store.head is not None else None)
        with db.snapshot() as conn:
            return _facts(conn)
    finally:
        db.close()


# --- reading backups ---------------------------------------------------------------------------------
def read_manifest(folder: Path) -> dict[str, Any]:
    """The backup's manifest, checked for shape and for every listed file being there with its size (the
    checksums are checked as the files are copied). Raises BackupError naming the file at fault."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(path, "missing: not a backup, or one that did not finish") from None
    except (OSError, ValueError) as exc:
        raise BackupError(path, f"unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or \
            not isinstance(manifest.get("files"), dict):
        raise BackupError(path, "not a manifest of this project's backups")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise BackupError(path, f"written by a newer release (format {manifest['format_version']}); "
                                f"upgrade to restore it")
    if CATALOGUE not in manifest["files"]:
        raise BackupError(path, f"lists no {CATALOGUE}")
    for name, entry in manifest["files"].items():
        if Path(name).name != name or name == MANIFEST:
            raise BackupError(path, f"lists a file outside the backup ({name!r})")
        try:
            size = (folder / name).stat().st_size
        except FileNotFoundError:
            raise BackupError(folder / name, "missing") from None
        if size != int(entry["bytes"]):
            raise BackupError(folder / name, f"truncated or changed: {size} bytes, the manifest says {entry['bytes']}")
    return manifest


def verify(folder: Path, manifest: dict[str, Any], names: list[str]) -> None:
    """Check the SHA-256 of those of ``names`` the manifest lists (BackupError naming the first that differs)."""
    for name in names:
        entry = manifest["files"].get(name)
        if entry is not None and sha256_file(folder / name) != entry["sha256"]:
            raise BackupError(folder / name, CORRUPT)


def list_backups(root: Path, model: str | None = None) -> list[dict[str, Any]]:
    """The complete backups under ``root`` (of ``model``), newest first: their manifests, without the file list."""
    found: list[dict[str, Any]] = []
    if not root.is_dir():
        return found
    for folder in root.iterdir():
        if folder.name.startswith(".") or not (folder / MANIFEST).is_file():
            continue
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict) or (model is not None and manifest.get("model") != model):
            continue
        files = manifest.get("files") or {}
        found.append({"name": folder.name, "path": folder, "model": manifest.get("model"),
                      "store": manifest.get("store"), "created_at": manifest.get("created_at", ""),
                      "generation": manifest.get("generation"), "products": manifest.get("products"),
                      "bytes": sum(int(f.get("bytes", 0)) for f in files.values()),
                      "consistent": manifest.get("consistent", True)})
    return sorted(found, key=lambda b: (str(b["created_at"]), b["name"]), reverse=True)
