"""``run_training.py --restore DIR [--as NAME] [--store local|milvus]``: a backup (``pipeline.backup``) back into
a model - a new one, or over an existing one - atomically, in either store.

1. The manifest is read and every file it lists checked for presence and size; each file's SHA-256 is then
   checked as it is copied. A corrupt or truncated backup is refused with one line naming the file, before
   anything the API serves is touched.
2. The model is staged whole in a new folder beside ``models/<m>/`` (same filesystem): the catalogue, the
   index, calibration and head. A backup of the other store is streamed into the target store (as
   ``--copy-store`` does) and indexed there; on Milvus the rows go to a new collection, ``<name>__r<time>``.
3. The staged folder and ``models/<m>/`` are exchanged in one step (Linux renameat2), and on Milvus the model is
   pointed at its new collection (one row of its meta collection). Every process sees the old model or the
   new one, never a mix: a serving API reloads within a second (until then it serves the old catalogue whole,
   and refuses writes to it, which would be lost), and a kill at any moment leaves one of the two in place.
4. ``data/<m>/model.json`` is the backup's; ``products.csv`` is written only when the model has none (a
   merchant's newer CSV is kept and reported); the pipeline's checkpoints are the backup's.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.ann import INDEX_JSON
from core.calibration import CALIBRATION_JSON, Calibration
from core.config import Settings
from core.errors import BackupError
from core.head import load_head
from core.model_config import BUILTIN_MODELS, ModelSpec, read_model_json, spec_from_json, validate_model_name
from core.sqlite_db import Database
from core.types import PhaseName, StoreKind
from pipeline.backup import (BUILD_DB, CATALOGUE, CORRUPT, HEAD, INPUTS, MANIFEST, Say, _quiet, checkpoint_name,
                             list_backups, read_manifest, verify)
from utils.atomic import exchange, fsync_dir

logger = logging.getLogger(__name__)

STAGING = ".restore-"  # models/.restore-<model>-<time>: a restore's staged folder, swept by the next restore
MILVUS_GRACE_S = 2.0  # an API still reading the replaced collection reloads within a second; then it is dropped
_CHUNK = 1 << 20


@dataclass
class RestoreReport:
    model: str
    source: Path
    store: StoreKind
    products: int
    generation: int
    replaced: bool
    seconds: float
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        then = ("replaced the previous catalogue; a running API switches to it within a second" if self.replaced
                else "a new model; a running API starts serving it within a few seconds")
        return [f"{self.model}: restored {self.products} products (generation {self.generation}) from {self.source} "
                f"into the {self.store} store in {self.seconds:.1f} s ({then})", *[f"  {n}" for n in self.notes]]


def locate(path: Path, model: str | None) -> Path:
    """The backup folder: ``path`` itself, or the newest backup of ``model`` in it."""
    if (path / MANIFEST).is_file():
        return path
    if not path.is_dir():
        raise BackupError(path, "no such backup folder")
    found = list_backups(path, model)
    if model is not None and found:
        return Path(found[0]["path"])
    if model is None and len(found) == 1:
        return Path(found[0]["path"])
    if not found:
        raise BackupError(path / MANIFEST, "missing: not a backup" + (f", and no backup of {model!r} in it"
                                                                       if model else ""))
    names = ", ".join(b["name"] for b in found[:3])
    raise BackupError(path, f"holds {len(found)} backups ({names}, ...): name one, or the model to restore its newest")


def restore_backup(settings: Settings, path: Path, *, model: str | None = None, name: str | None = None,
                   store: StoreKind | None = None, say: Say = _quiet) -> RestoreReport:
    """Restore the backup at ``path`` (or the newest backup of ``model`` in it) as ``name`` (default: the
    backed-up model), into ``store`` (default: the backup's model.json, else the store setting)."""
    from pipeline.runner import model_lock

    start = time.perf_counter()
    folder = locate(Path(path), model)
    say(f"checking {folder}")
    manifest = read_manifest(folder)
    if model is not None and manifest["model"] != model:
        raise BackupError(folder, f"is a backup of {manifest['model']!r}, not {model!r} (restore it under another "
                                  f"name with --as {model})")
    target = validate_model_name(name or str(manifest["model"]))
    # the small files now (what they say decides the target); the large ones as they are copied
    verify(folder, manifest, [*INPUTS, *(checkpoint_name(p) for p in PhaseName)])
    spec, model_json = _target_spec(settings, folder, target, store)
    kind = spec.store_for(settings)
    models = spec.paths(settings).models
    existed = _exists(settings, spec)
    created = not models.exists()
    try:
        with model_lock(models, target):
            notes = _switch(settings, spec, folder, manifest, say)
            notes += _restore_inputs(settings, spec, folder, manifest, model_json)
    except BaseException:
        if created and models.is_dir() and {p.name for p in models.iterdir()} <= {".build.lock"}:
            shutil.rmtree(models, ignore_errors=True)  # nothing was restored: leave no empty model behind
        raise
    report = RestoreReport(target, folder, kind, int(manifest["products"]), int(manifest["generation"]), existed,
                           time.perf_counter() - start, notes)
    logger.info("%s", report.lines()[0])
    return report


def _switch(settings: Settings, spec: ModelSpec, folder: Path, manifest: dict[str, Any], say: Say) -> list[str]:
    """Stage the restored model, swap it in, and drop what it replaced; notes for the operator."""
    target, kind = spec.name, spec.store_for(settings)
    _sweep(settings, target, kind)
    stage = settings.models_dir / f"{STAGING}{target}-{_stamp()}"
    try:
        with _staged(stage, target) as staged:
            physical = _stage(settings, spec, folder, manifest, staged, say)
            say(f"switching {target} to the restored catalogue")
            atomic = exchange(staged, spec.paths(settings).models)
            previous = _point(settings, target, physical) if physical else None
            say(f"switched; removing the replaced catalogue of {target}")
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # after the swap: the replaced catalogue
    if previous and previous != physical:
        time.sleep(MILVUS_GRACE_S)
        _drop(settings, target, previous)
    return [] if atomic else ["this filesystem cannot swap folders in one step: the model was missing for a moment"]


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _exists(settings: Settings, spec: ModelSpec) -> bool:
    from core.catalogue_store import store_exists

    return store_exists(settings, spec)


@contextmanager
def _staged(stage: Path, model: str) -> Iterator[Path]:
    """The staged folder, locked as a model folder is (its lock file moves in with it: no build starts on the
    restored model until the restore is done)."""
    from pipeline.runner import model_lock

    stage.mkdir(parents=True)
    with model_lock(stage, model):
        yield stage


def _target_spec(settings: Settings, folder: Path, target: str,
                 store: StoreKind | None) -> tuple[ModelSpec, dict[str, Any] | None]:
    """The restored model's spec and the model.json to write for it (None: leave the model's own as it is):
    the backup's model.json (else the model's own), with ``"store"`` set when ``store`` is given."""
    mine = settings.data_dir / target / "model.json"
    model_json = _json_file(folder / "model.json")
    if store is not None:
        model_json = {**(model_json if model_json is not None else _json_file(mine) or {}), "store": store.value}
    base = ModelSpec(name=target, display_name=target.replace("_", " ").title())
    builtin = next((s for s in BUILTIN_MODELS if s.name == target), None)
    if model_json is None:
        return (read_model_json(mine, builtin or base) if mine.is_file() else builtin or base), None
    return spec_from_json(model_json, folder / "model.json", builtin or base), model_json


def _json_file(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackupError(path, f"not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise BackupError(path, "not a JSON object")
    return raw


def _sweep(settings: Settings, target: str, kind: StoreKind) -> None:
    """What restores of this model killed half-way left: staged folders, and collections no model uses."""
    for left in settings.models_dir.glob(f"{STAGING}{target}-*"):
        shutil.rmtree(left, ignore_errors=True)
    if kind == StoreKind.MILVUS:
        from core.milvus_client import drop_collection, stray_collections

        for name in stray_collections(settings, target):
            logger.info("%s: dropping collection %s left by an unfinished restore", target, name)
            drop_collection(settings, target, name)


# --- staging -----------------------------------------------------------------------------------------
def _stage(settings: Settings, spec: ModelSpec, folder: Path, manifest: dict[str, Any], stage: Path,
           say: Say) -> str | None:
    """Fill ``stage`` with the restored model (and, on Milvus, a new collection, whose name is returned)."""
    files: dict[str, Any] = manifest["files"]
    for name in (HEAD, CALIBRATION_JSON):
        if name in files:
            _copy_checked(folder, name, files[name], stage)
    if spec.store_for(settings) == StoreKind.MILVUS:
        return _stage_milvus(settings, spec, folder, manifest, stage, say)
    say(f"restoring {CATALOGUE}")
    _copy_checked(folder, CATALOGUE, files[CATALOGUE], stage)
    _check_catalogue(stage / CATALOGUE, folder / CATALOGUE, manifest)
    if manifest.get("store") == StoreKind.LOCAL.value and INDEX_JSON in files:
        index_file = str(json.loads((folder / INDEX_JSON).read_text(encoding="utf-8")).get("file", ""))
        if index_file in files:
            say("restoring the index")
            _copy_checked(folder, index_file, files[index_file], stage)
            _copy_checked(folder, INDEX_JSON, files[INDEX_JSON], stage)
            return None
    from core.local_store import LocalStore
    from pipeline.copy_store import copy_build_state

    say("building the index")
    restored = LocalStore(stage, settings, name=spec.name, index_type=spec.index_type_for(settings),
                          head=load_head(stage / HEAD), open_index=False)
    try:
        if BUILD_DB in files:  # a Milvus backup: the build machine's state goes into the catalogue's file
            _copy_checked(folder, BUILD_DB, files[BUILD_DB], stage)
            copy_build_state(stage / BUILD_DB, restored)
            (stage / BUILD_DB).unlink()
        restored.open_index()  # built, tuned, saved and calibrated here: the API loads it ready
    finally:
        restored.close()
    return None


def _stage_milvus(settings: Settings, spec: ModelSpec, folder: Path, manifest: dict[str, Any], stage: Path,
                  say: Say) -> str:
    from core.local_store import LocalStore
    from core.milvus_client import RESTORED_INFIX, collection_name
    from core.milvus_store import MilvusStore
    from pipeline.copy_store import copy_build_state, copy_products

    files: dict[str, Any] = manifest["files"]
    source_dir = stage / ".source"  # the backup's catalogue, read from here: it goes with the replaced folder
    source_dir.mkdir()
    say(f"restoring {CATALOGUE}")
    _copy_checked(folder, CATALOGUE, files[CATALOGUE], source_dir)
    _check_catalogue(source_dir / CATALOGUE, folder / CATALOGUE, manifest)
    head = load_head(stage / HEAD)
    stamp = _stamp().strip("Z").replace("T", "")
    physical = collection_name(settings.milvus_prefix, spec.name) + RESTORED_INFIX + stamp
    source = LocalStore(source_dir, settings, name=spec.name, head=head, open_index=False)
    dest = MilvusStore(stage, settings, name=spec.name, index_type=spec.index_type_for(settings), head=head,
                       open_index=False, collection=physical)
    try:
        say(f"writing the products into Milvus collection {physical}")
        copy_products(source, dest)
        if BUILD_DB in files:
            _copy_checked(folder, BUILD_DB, files[BUILD_DB], stage)
        else:
            copy_build_state(source_dir / CATALOGUE, dest)
        calibration = stage / CALIBRATION_JSON
        dest.restored(int(manifest["generation"]),
                      Calibration.from_json(json.loads(calibration.read_text(encoding="utf-8")))
                      if calibration.is_file() else None)
        say("building the index")
        dest.rebuild(save=True)
        if dest.count() != int(manifest["products"]):
            raise BackupError(folder / CATALOGUE, f"{dest.count()} products reached Milvus, the manifest says "
                                                  f"{manifest['products']}")
    except BaseException:
        _drop(settings, spec.name, physical)
        raise
    finally:
        dest.close()
        source.close()
        shutil.rmtree(source_dir, ignore_errors=True)
    return physical


def _copy_checked(folder: Path, name: str, entry: dict[str, Any], out: Path) -> None:
    """Copy one file of the backup, checking its SHA-256 on the way (BackupError naming it when it differs)."""
    digest = hashlib.sha256()
    source = folder / name
    with open(source, "rb") as src, open(out / name, "wb") as dst:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    if digest.hexdigest() != entry["sha256"]:
        raise BackupError(source, CORRUPT)


def _check_catalogue(staged: Path, shown: Path, manifest: dict[str, Any]) -> None:
    db = Database(staged, "", manifest["model"])
    try:
        conn = db.reader()
        generation = int(conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
        products = int(conn.execute("SELECT count(*) FROM products").fetchone()[0])
    except Exception as exc:
        raise BackupError(shown, f"not a readable catalogue ({exc})") from None
    finally:
        db.close()
    if (generation, products) != (int(manifest["generation"]), int(manifest["products"])):
        raise BackupError(shown, f"holds {products} products at generation {generation}, the manifest says "
                                 f"{manifest['products']} at {manifest['generation']}")


# --- switching ---------------------------------------------------------------------------------------
def _point(settings: Settings, model: str, physical: str) -> str:
    from core.milvus_client import switch_collection

    return switch_collection(settings, model, physical)


def _drop(settings: Settings, model: str, physical: str) -> None:
    from core.milvus_client import drop_collection

    try:
        drop_collection(settings, model, physical)
    except Exception as exc:  # garbage only: the next restore of the model sweeps it
        logger.warning("%s: collection %s not dropped (%s); the next restore drops it", model, physical, exc)


def _restore_inputs(settings: Settings, spec: ModelSpec, folder: Path, manifest: dict[str, Any],
                    model_json: dict[str, Any] | None) -> list[str]:
    """data/<m>/model.json and products.csv, and the model's pipeline checkpoints (the backup's, or none: the
    next build then checks every phase); what to tell the operator."""
    paths = spec.paths(settings)
    notes: list[str] = []
    paths.data.mkdir(parents=True, exist_ok=True)
    if model_json is not None:
        _install(json.dumps(model_json, indent=2).encode() + b"\n", paths.data / "model.json")
    csv = folder / "products.csv"
    if csv.is_file():
        mine = paths.data / "products.csv"
        if not mine.is_file():
            _install(csv, mine)
        elif not filecmp.cmp(mine, csv, shallow=False):
            notes.append(f"{mine} differs from the backup's products.csv and was kept: the next build applies it "
                         f"(the backup's is {csv})")
    for phase in PhaseName:
        name = checkpoint_name(phase)
        if name in manifest["files"]:
            paths.checkpoints.mkdir(parents=True, exist_ok=True)
            _install(folder / name, paths.checkpoint(phase))
        else:
            paths.checkpoint(phase).unlink(missing_ok=True)
    fsync_dir(paths.data)
    return notes


def _install(source: Path | bytes, dest: Path) -> None:
    """Put a file in place atomically, with the usual permissions (a merchant's folder: not owner-only)."""
    tmp = dest.with_name(f".{dest.name}.restore")
    if isinstance(source, bytes):
        tmp.write_bytes(source)
    else:
        shutil.copyfile(source, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
