"""``run_training.py <m> --copy-store``: a built model copied between the local store and Milvus (the session's
real Milvus server, whose collections hold CLIP vectors in base64: the copy reads them back) and back, checked
by the command itself; the copy serves the same results and the next build on the target redoes no work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from core.catalogue_store import open_store
from core.config import PROJECT_ROOT, load_settings
from core.model_config import ModelRegistry
from core.types import StoreKind
from tests.stores import as_env, milvus_overrides
from utils.demo_catalogue import write_demo

pytestmark = pytest.mark.slow
QUERY_IDS = ["S1001", "S1004", "S1008", "S1012"]


def _cli(args: list[str], root, tiny_clip, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "IMAGESEARCH_ROOT": str(root), "IMAGESEARCH_CLIP_MODEL": str(tiny_clip),
            "IMAGESEARCH_TORCH_THREADS": "1", **env}
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "run_training.py"), *args, "--no-progress"],
                          env=full, capture_output=True, text=True, timeout=300)


def _top(root, tiny_clip, store: StoreKind, milvus: dict[str, str]) -> tuple[int, list[list[str]]]:
    settings = load_settings(root=root, clip_model=str(tiny_clip), **{**milvus, "store": store})
    spec = ModelRegistry.discover(settings).get("shirts")
    opened = open_store(settings, spec)
    try:
        queries = opened.vectors(QUERY_IDS)
        return opened.count(), [[h.product.id for h in row] for row in opened.search(queries, 5)]
    finally:
        opened.close()


def test_a_model_copies_to_milvus_and_back_with_the_same_results(tmp_path, tiny_clip, milvus_standalone):
    milvus = milvus_overrides(milvus_standalone)
    where = {k: v for k, v in as_env(milvus).items() if k != "IMAGESEARCH_STORE"}  # the server, not the store
    root = tmp_path / "root"
    write_demo(root / "data", general_per_category=2, shirts_per_category=3)
    assert _cli(["shirts"], root, tiny_clip).returncode == 0
    count, local_top = _top(root, tiny_clip, StoreKind.LOCAL, milvus)

    copied = _cli(["shirts", "--copy-store", "milvus"], root, tiny_clip, **where)
    assert copied.returncode == 0, copied.stderr
    assert f"copied {count} products from the local store to the milvus store" in copied.stdout
    assert "the copy checks out" in copied.stdout and 'set "store": "milvus"' in copied.stdout
    assert _top(root, tiny_clip, StoreKind.MILVUS, milvus) == (count, local_top)

    # the next build on Milvus finds every image fetched and every view embedded: nothing is redone
    rebuilt = _cli(["shirts", "--force"], root, tiny_clip, **as_env(milvus))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "downloaded=0, reused=" in rebuilt.stdout and "embedded=0," in rebuilt.stdout, rebuilt.stdout
    assert f"index ready: Milvus collection {milvus['milvus_prefix']}shirts at " in rebuilt.stdout
    listing = _cli(["--list"], root, tiny_clip, **as_env(milvus))
    assert "milvus flat" in listing.stdout and "yes (15)" in listing.stdout, listing.stdout

    same = _cli(["shirts", "--copy-store", "milvus"], root, tiny_clip, **as_env(milvus))
    assert same.returncode == 1 and "already lives in the milvus store" in same.stderr
    back = _cli(["shirts", "--copy-store", "local"], root, tiny_clip, **as_env(milvus))
    assert back.returncode == 0 and "the copy checks out" in back.stdout, back.stderr


def test_the_milvus_store_without_pymilvus_gives_one_line_saying_what_to_install(tmp_path, tiny_clip):
    root = tmp_path / "root"
    write_demo(root / "data", general_per_category=1, shirts_per_category=1)
    blocked = ("import sys; sys.modules.update(pymilvus=None, milvus_lite=None); import run_training; "
               "sys.exit(run_training.main(['shirts', '--no-progress']))")
    env = {**os.environ, "IMAGESEARCH_ROOT": str(root), "IMAGESEARCH_CLIP_MODEL": str(tiny_clip),
           "IMAGESEARCH_STORE": "milvus"}
    proc = subprocess.run([sys.executable, "-c", blocked], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120, env=env)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "IMAGESEARCH_STORE=milvus needs pymilvus" in lines[0] and "pip install -r requirements-scale.txt" in lines[0]
