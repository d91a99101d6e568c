"""Call trace: which of the repository's own files three walks through the product touch.

The walks (issue 21), each run in this process on a tiny catalogue with the tiny CLIP:

- search: a shopper's image query, ``POST /<model>/search`` through the FastAPI app (TestClient, lifespan on);
- build: one CSV row to the index, a one-product build through ``run_training``'s pipeline (``run_model``);
- upsert: one admin upsert, ``POST /<model>/products`` with the admin key (a local image reference).

Each walk runs once untraced first (imports, model loads, thread pools), then once recorded: only what runs
during the recorded walk counts. A profile function (``sys.setprofile``, ``threading.setprofile``) is installed
before anything starts a thread, so the event loop's thread, anyio's workers and the batcher are traced; forked
preprocessing workers report through a file. Background pollers that tick on their own clock (the index
watcher, the job poller, the query log's writer) are left out: what they touch does not depend on the walk.
Counted: ``.py`` files under the repository, not ``tests/`` or ``bench/``, not an installed package.

Prints, per walk, the number of files and their names, then one JSON line. No baseline to compare with in the
same process: run it in a checkout of the commit to compare against (the files it imports exist in both).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import photo_jpegs  # noqa: E402

_BACKGROUND = {"index-watcher", "jobs", "query-log"}  # threads on their own clock, not driven by a walk
_ADMIN_KEY = "walks-admin-key"


class _Recorder:
    """Code files entered (``call`` events) while recording, per thread; in a forked child, appended to a file."""

    def __init__(self, child_log: Path) -> None:
        self.recording = False
        self.seen: dict[int, set[str]] = {}
        self.names: dict[int, str] = {}
        self._child_log = child_log
        self._child_fd: int | None = None

    def __call__(self, frame: FrameType, event: str, arg: object) -> None:
        if event != "call" or not self.recording:
            return
        ident = threading.get_ident()
        seen = self.seen.get(ident)
        if seen is None:
            seen = self.seen[ident] = set()
            self.names[ident] = threading.current_thread().name
        name = frame.f_code.co_filename
        if name not in seen:
            seen.add(name)
            if self._child_fd is not None:
                os.write(self._child_fd, (name + "\n").encode())

    def after_fork(self) -> None:
        self.seen, self.names = {}, {}
        self._child_fd = os.open(self._child_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    @contextmanager
    def walk(self) -> Iterator[set[str]]:
        """Record while the block runs; the set it yields then holds the repository files the walk touched."""
        self.seen, self.names = {}, {}
        self._child_log.write_text("")
        found: set[str] = set()
        self.recording = True
        try:
            yield found
        finally:
            self.recording = False
        touched = set(self._child_log.read_text().splitlines()).union(
            *(files for ident, files in self.seen.items() if self.names[ident] not in _BACKGROUND))
        found |= {own for name in touched if (own := _own(name))}


def _own(filename: str) -> str | None:
    """The file's path in the repository, or None for tests/, bench/, installed packages and the stdlib."""
    path = Path(filename)
    if not path.is_absolute() or path.suffix != ".py" or "site-packages" in path.parts:
        return None
    try:
        rel = path.resolve().relative_to(REPO)
    except ValueError:
        return None
    return None if rel.parts[0] in ("tests", "bench") or rel.parts[0].startswith(".") else rel.as_posix()


def _catalogue(data: Path, model: str, ids: list[str], photos: Iterator[Path]) -> None:
    """data/<model>/products.csv with one local image per product, and two spare images for the upserts."""
    folder = data / model
    (folder / "images").mkdir(parents=True)
    rows = []
    for n, pid in enumerate(ids):
        shutil.copyfile(next(photos), folder / "images" / f"{pid}.jpg")
        rows.append({"shopify_product_id": pid, "title": f"product {pid}", "images": json.dumps([f"images/{pid}.jpg"]),
                     "preview_image": f"images/{pid}.jpg", "category": "things", "price": f"{10 + n}.00"})
    for n in range(2):
        shutil.copyfile(next(photos), folder / "images" / f"new{n}.jpg")
    with open(folder / "products.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _run_walks(recorder: _Recorder, root: Path) -> dict[str, set[str]]:
    from core.config import load_settings
    from core.model_config import ModelRegistry
    from pipeline.runner import run_model
    from utils.tiny_clip import write_tiny_clip

    clip = write_tiny_clip(root / "tiny_clip")
    photos = iter(photo_jpegs(root / "photos", 12, size=(160, 140)))
    query = next(photos).read_bytes()
    _catalogue(root / "data", "shop", ["S1", "S2", "S3"], photos)
    _catalogue(root / "data", "warm", ["W1"], photos)
    _catalogue(root / "data", "walk", ["K1"], photos)
    settings = load_settings(root=root, clip_model=str(clip), device="cpu", torch_threads=1, api_key=_ADMIN_KEY)
    registry = ModelRegistry.discover(settings)
    found: dict[str, set[str]] = {}

    def build(name: str) -> Callable[[], Any]:
        return lambda: run_model(settings, registry.get(name), progress=False)

    build("shop")()
    build("warm")()  # the untraced run of the build walk: a model of its own, as a second build would skip
    with recorder.walk() as found["build"]:
        build("walk")()

    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app(settings, watch_interval=3600)) as client:
        def search() -> None:
            r = client.post("/shop/search", files={"file": ("query.jpg", query, "image/jpeg")})
            assert r.status_code == 200 and r.json()["num_results"] > 0, r.text

        def upsert(pid: str, n: int) -> None:
            r = client.post("/shop/products", headers={"X-API-Key": _ADMIN_KEY},
                            json={"id": pid, "title": f"new {pid}", "images": [f"images/new{n}.jpg"]})
            assert r.status_code == 200 and r.json()["action"] == "upserted", r.text

        search()
        with recorder.walk() as found["search"]:
            search()
        upsert("N0", 0)
        with recorder.walk() as found["upsert"]:
            upsert("N1", 1)
    return found


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0]).parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = tempfile.TemporaryDirectory(prefix="walks-")
    root = Path(tmp.name)
    recorder = _Recorder(root / "child-calls.txt")
    os.register_at_fork(after_in_child=recorder.after_fork)
    sys.setprofile(recorder)
    threading.setprofile(recorder)
    try:
        found = _run_walks(recorder, root)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
        tmp.cleanup()
    summary = {}
    for walk in ("search", "build", "upsert"):
        files = sorted(found[walk])
        summary[walk] = {"files": len(files), "names": files}
        print(f"{walk}: {len(files)} files")
        for name in files:
            print(f"  {name}")
    print(json.dumps({"bench": "walks", "commit": _commit(), **{w: s["files"] for w, s in summary.items()},
                      "names": {w: s["names"] for w, s in summary.items()}}))
    return 0


def _commit() -> str | None:
    """The checkout's commit, so two runs' lines say which is which."""
    found = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return found.stdout.strip() or None


if __name__ == "__main__":
    sys.exit(main())
