"""Backups and restores of a live model: a backup taken while 8 admin writers write restores to exactly one
generation's catalogue; a restore killed (-9) at any point leaves the old or the new model serving; a corrupt
or truncated backup is refused with one line naming the file; backups restore across stores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from core.catalogue_store import open_store
from core.config import PROJECT_ROOT, Settings, load_settings
from core.errors import BackupError, CatalogueReplacedError, StoreError
from core.model_config import ModelSpec
from core.store import Product, ProductVector
from core.types import StoreKind
from pipeline.backup import backup_model, list_backups
from pipeline.restore import restore_backup
from tests.api.conftest import API_KEY, start_server, stop_server
from tests.stores import need_pymilvus, unique_prefix

KEY = {"X-API-Key": API_KEY}
WRITERS = 8


def _catalogue(settings: Settings, name: str, store: StoreKind | None = None) -> tuple[int, dict, dict]:
    """(generation, id -> metadata, id -> raw CLIP vector) of a model's store, read directly."""
    opened = open_store(settings, ModelSpec(name=name, store=store), open_index=False)
    try:
        ids = [pid for batch, _ in opened.scan_vectors(1000, clip=True) for pid in batch]
        products = {p.id: (p.title, p.category, tuple(p.images), dict(p.extra), p.source.value)
                    for p in opened.get(ids)}
        vectors = dict(zip(ids, opened.vectors(ids, clip=True), strict=True))
        return opened.generation(), products, vectors
    finally:
        opened.close()


def _same(a: tuple[int, dict, dict], b: tuple[int, dict, dict]) -> None:
    assert a[0] == b[0] and a[1] == b[1]
    assert a[2].keys() == b[2].keys() and all(np.array_equal(a[2][k], b[2][k]) for k in a[2])


# --- 8 concurrent writers ------------------------------------------------------------------------------
def _writer(client, n: int, images: list[str], started: threading.Barrier, done: threading.Event,
            log: list[tuple[int, str, str, str]], after: list[int]) -> None:
    """Add, retitle and delete products of its own, recording each acknowledged write's generation."""
    started.wait()
    i = 0
    while not done.is_set() or after[n] < 2:  # at least two writes after the backup has finished
        pid = f"W{n}-{i // 3}"
        if i % 3 == 2:
            r = client.delete(f"/general/products/{pid}", headers=KEY)
            op, title = "delete", ""
        else:
            title = f"writer {n} product {i // 3} version {i % 3}"
            r = client.post("/general/products", headers=KEY,
                            json={"id": pid, "title": title, "images": [images[(n + i) % len(images)]],
                                  "category": "mugs"})
            op = "upsert"
        assert r.status_code == 200, r.text
        log.append((r.json()["generation"], op, pid, title))
        after[n] += done.is_set()
        i += 1


@pytest.mark.slow
def test_a_backup_taken_during_8_concurrent_writers_restores_exactly_one_generation(copy_built, tmp_path):
    settings = copy_built(tmp_path / "root", ("general",), api_key=API_KEY)
    start_gen, start_products, _ = _catalogue(settings, "general")
    images = sorted(f"images/{p.name}" for p in (settings.data_dir / "general" / "images").glob("*.jpg"))
    server = start_server(settings)
    log: list[tuple[int, str, str, str]] = []
    after = [0] * WRITERS
    started, done = threading.Barrier(WRITERS + 1), threading.Event()
    try:
        with server.client() as client:
            threads = [threading.Thread(target=_writer, args=(client, n, images, started, done, log, after))
                       for n in range(WRITERS)]
            for t in threads:
                t.start()
            started.wait()
            while len(log) < 2 * WRITERS:  # writes land before the backup starts, too
                time.sleep(0.05)
            task = client.post("/general/backups", headers=KEY).json()["task_id"]
            job = client.get(f"/jobs/{task}", headers=KEY).json()
            deadline = time.monotonic() + 180
            while job["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
                time.sleep(0.1)
                job = client.get(f"/jobs/{task}", headers=KEY).json()
            done.set()
            for t in threads:
                t.join(120)
            assert job["status"] == "succeeded", job
            listed = client.get("/general/backups", headers=KEY).json()
    finally:
        stop_server(server)

    generation = job["counts"]["generation"]
    acked = sorted(g for g, *_ in log)
    assert acked == sorted(set(acked)), "each acknowledged write is its own generation"
    assert acked[0] < generation < acked[-1], "the backup was taken while the writers wrote"
    assert [b["name"] for b in listed] == [job["counts"]["backup"]] and listed[0]["generation"] == generation

    # the catalogue as of that generation: the start, then every acknowledged write up to it, in order
    expected = {pid: title for pid, (title, *_rest) in start_products.items()}
    for gen, op, pid, title in sorted(log):
        if start_gen < gen <= generation:
            if op == "delete":
                expected.pop(pid)
            else:
                expected[pid] = title
    report = restore_backup(settings, settings.backups_dir, model="general", name="general_restored")
    restored_gen, restored, _ = _catalogue(settings, "general_restored")
    assert report.generation == restored_gen == generation
    assert {pid: meta[0] for pid, meta in restored.items()} == expected


# --- kill -9 mid-restore -------------------------------------------------------------------------------
def _served(client, states: dict[str, set[str]], want: str | None = None) -> str:
    """Which catalogue one search over the whole model finds: exactly one of ``states`` (never a mix), once
    the API answers (a request in the instant of the switch may get 503 + Retry-After); with ``want``, waits
    until it serves that one (the API switches at its next watcher tick)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = client.get("/shirts/search/text", params={"q": "shirt", "top_k": 100, "dedupe": "false"})
        assert found.status_code in (200, 503), found.text
        if found.status_code == 200:
            ids = {h["id"] for h in found.json()["results"]}
            state = next((name for name, expected in states.items() if ids == expected), None)
            assert state is not None, f"a catalogue that is neither the old nor the new one: {sorted(ids)}"
            if want is None or state == want:
                return state
        time.sleep(0.1)
    raise AssertionError(f"the API never settled on {want or 'one'} catalogue")


def _add(settings: Settings, pid: str) -> None:
    store = open_store(settings, ModelSpec(name="shirts"))
    try:
        vector = store.vectors(["S1001"], clip=True)[0]
        store.upsert([ProductVector(Product(id=pid, title=f"{pid} shirt", category="polos"), clip=vector)])
    finally:
        store.close()


@pytest.mark.slow
def test_a_restore_killed_at_any_point_leaves_the_old_or_the_new_catalogue_serving(copy_built, tmp_path, tiny_clip):
    settings = copy_built(tmp_path / "root", ("shirts",), api_key=API_KEY)
    _add(settings, "NEW-ONLY")
    backup = backup_model(settings, ModelSpec(name="shirts"), tmp_path / "backups").path
    store = open_store(settings, ModelSpec(name="shirts"))
    store.delete(["NEW-ONLY"])
    store.close()
    _add(settings, "OLD-ONLY")
    ids = set(_catalogue(settings, "shirts")[1])
    states = {"old": ids, "new": ids - {"OLD-ONLY"} | {"NEW-ONLY"}}
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESEARCH_")}
    env.update(IMAGESEARCH_ROOT=str(settings.root), IMAGESEARCH_CLIP_MODEL=str(tiny_clip), PYTHONPATH=str(PROJECT_ROOT))
    server = start_server(settings)
    try:
        with server.client() as client:
            assert _served(client, states) == "old"
            # killed after its n-th progress line: while staging (the index), then just after the switch
            for lines in (3, 5):
                proc = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "run_training.py"), "--restore",
                                         str(backup)], env=env, cwd=settings.root, stdout=subprocess.PIPE, text=True)
                for _ in range(lines):
                    assert proc.stdout.readline().startswith("... ")
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)
                proc.stdout.close()
                _served(client, states)  # the old or the new one, whole
            assert _served(client, states, want="new") == "new"  # killed after the switch: the new one, whole
            finished = restore_backup(settings, backup)
            assert finished.replaced and _served(client, states, want="new") == "new"
    finally:
        stop_server(server)
    assert not list(settings.models_dir.glob(".restore-*")), "what the killed restores left is swept"
    assert "NEW-ONLY" in _catalogue(settings, "shirts")[1]


def test_a_store_open_during_a_restore_keeps_reading_the_old_catalogue_whole_and_refuses_writes(copy_built, tmp_path):
    settings = copy_built(tmp_path / "root", ("shirts",))
    _add(settings, "NEW-ONLY")
    backup = backup_model(settings, ModelSpec(name="shirts"), tmp_path / "backups").path
    serving = open_store(settings, ModelSpec(name="shirts"))  # as an API process holds it
    serving.delete(["NEW-ONLY"])
    before = serving.count()
    restore_backup(settings, backup)
    assert serving.replaced() and serving.count() == before and not serving.get(["NEW-ONLY"])
    vector = serving.vectors(["S1001"], clip=True)[0]
    with pytest.raises(CatalogueReplacedError, match="restored from a backup"):  # it would be lost: not acked
        serving.upsert([ProductVector(Product(id="LATE", title="late"), clip=vector)])
    restored_index = (settings.models_dir / "shirts" / "index.json").read_bytes()
    with pytest.raises((OSError, RuntimeError, StoreError)):  # a late save (a compaction) goes to its own folder: gone
        serving.save_index()
    assert (settings.models_dir / "shirts" / "index.json").read_bytes() == restored_index
    serving.close()
    restored = _catalogue(settings, "shirts")
    assert "NEW-ONLY" in restored[1] and "LATE" not in restored[1]


# --- a bad backup ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_backup(built_root, tmp_path_factory, tiny_clip) -> Path:
    settings = load_settings(root=built_root, clip_model=str(tiny_clip))
    return backup_model(settings, ModelSpec(name="shirts"), tmp_path_factory.mktemp("backups")).path


def _cli_restore(root: Path, backup: Path, tiny_clip: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESEARCH_")}
    env.update(IMAGESEARCH_ROOT=str(root), IMAGESEARCH_CLIP_MODEL=str(tiny_clip))
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "run_training.py"), "--restore", str(backup)],
                          env=env, capture_output=True, text=True, timeout=120)


def test_a_corrupt_backup_is_refused_with_one_line_naming_the_file_and_nothing_changes(one_backup, copy_built,
                                                                                       tmp_path, tiny_clip):
    settings = copy_built(tmp_path / "root", ("shirts",))
    before = _catalogue(settings, "shirts")
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in one_backup.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    data = bytearray((bad / "catalogue.db").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern in the middle of the catalogue
    (bad / "catalogue.db").write_bytes(bytes(data))
    done = _cli_restore(settings.root, bad, tiny_clip)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert str(bad / "catalogue.db") in lines[0] and "checksum mismatch" in lines[0]
    _same(_catalogue(settings, "shirts"), before)
    assert not list(settings.models_dir.glob(".restore-*"))


def test_a_truncated_or_unfinished_backup_is_refused_naming_the_file(one_backup, tmp_path, make_settings):
    settings = make_settings(root=tmp_path / "root")
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in one_backup.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    index = next(bad.glob("index-*.faiss"))
    index.write_bytes(index.read_bytes()[:-100])
    with pytest.raises(BackupError, match=f"backup refused: {index}: truncated or changed"):
        restore_backup(settings, bad)
    (bad / "manifest.json").unlink()
    with pytest.raises(BackupError, match=f"backup refused: {bad / 'manifest.json'}: missing"):
        restore_backup(settings, bad)
    assert not (settings.models_dir / "shirts" / "catalogue.db").exists()


# --- across stores -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_backups_restore_across_stores_and_over_a_milvus_model(one_backup, milvus_server, built_root, tmp_path,
                                                                tiny_clip):
    need_pymilvus()
    from core.milvus_client import client, collection_name, resolve_collection

    settings = load_settings(root=tmp_path / "root", clip_model=str(tiny_clip), milvus_uri=milvus_server.uri,
                             milvus_prefix=unique_prefix())
    source = _catalogue(load_settings(root=built_root, clip_model=str(tiny_clip)), "shirts")
    restore_backup(settings, one_backup, name="shirts", store=StoreKind.MILVUS)  # local -> Milvus
    _same(_catalogue(settings, "shirts", StoreKind.MILVUS), source)
    first = resolve_collection(settings, "shirts")
    assert first.startswith(collection_name(settings.milvus_prefix, "shirts") + "__r")

    milvus_backup = backup_model(settings, ModelSpec(name="shirts", store=StoreKind.MILVUS), tmp_path / "b").path
    assert list_backups(tmp_path / "b")[0]["store"] == "milvus"
    serving = open_store(settings, ModelSpec(name="shirts", store=StoreKind.MILVUS))
    over = restore_backup(settings, milvus_backup)  # Milvus -> Milvus, over the model: a new collection
    assert over.replaced and over.store == StoreKind.MILVUS and serving.replaced()
    with pytest.raises(StoreError):  # a write to the replaced collection is never acknowledged
        serving.delete(["S1001"])
    serving.close()
    _same(_catalogue(settings, "shirts", StoreKind.MILVUS), source)
    assert resolve_collection(settings, "shirts") != first and not client(settings).has_collection(first)

    restore_backup(settings, milvus_backup, name="shirts_local", store=StoreKind.LOCAL)  # Milvus -> local
    _same(_catalogue(settings, "shirts_local", StoreKind.LOCAL), source)
    local = open_store(settings, replace(ModelSpec(name="shirts_local"), store=StoreKind.LOCAL))
    try:
        queries = local.vectors(["S1001", "S1008"])
        assert local.live_index is not None and [h.product.id for h in local.search(queries, 3)[0]][0] == "S1001"
    finally:
        local.close()
