"""What the Milvus store promises beyond the store contract, on milvus-lite (embedded file) and a real Milvus
server: a layout the server can hold (Milvus 2.3 has one vector field and no top-level JSON arrays) that gives
every field back as written; this process reads its own writes at once, edit after edit; another process's
writes are seen once ``refresh`` (the API's watcher) has seen their generation, or at once with Strong
consistency; and a write landing while ``refresh`` reads is never overwritten by it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from core.config import Settings, load_settings
from core.store import Filter, Product, ProductVector, Source
from tests.processes import REPO
from tests.stores import milvus_overrides, need_pymilvus

DIM = 16
_WRITER = """import json, sys
import numpy as np
from core.config import load_settings
from core.milvus_store import MilvusStore
from core.store import Product, ProductVector, Source
args = json.loads(sys.argv[1])
store = MilvusStore(args["folder"], load_settings(**args["settings"]), name="m", open_index=False)
for pid in args.get("delete", []):
    store.delete([pid])
for pid, vector in args.get("upsert", {}).items():
    store.upsert([ProductVector(Product(id=pid, title="from elsewhere", source=Source.API),
                                clip=np.asarray(vector, dtype=np.float32))])
"""


def _unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _item(pid: str, vector: np.ndarray, **kw) -> ProductVector:
    return ProductVector(Product(id=pid, title=f"title {pid}", category=kw.pop("category", "c"), **kw), clip=vector)


@pytest.fixture(params=["milvus", "milvus-server"])
def milvus_settings(request, tmp_path) -> Settings:
    """Settings of a Milvus store: an embedded milvus-lite file, or the session's real server."""
    need_pymilvus()
    overrides = {"store": "milvus"}
    if request.param == "milvus-server":
        overrides = milvus_overrides(request.getfixturevalue("milvus_standalone"))
    return load_settings(root=tmp_path, **overrides)


def _open(settings: Settings, tmp_path, **kw):
    from core.milvus_store import MilvusStore

    return MilvusStore(tmp_path / "models" / "m", settings, name="m", **kw)


def _other_process(settings: Settings, tmp_path, **writes) -> None:
    """Write through a MilvusStore in another Python process (it shares nothing with this one but the server)."""
    args = {"folder": str(tmp_path / "models" / "m"), "settings": {**settings.model_dump(mode="json",
            include={"root", "store", "milvus_uri", "milvus_prefix"})}, **writes}
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESEARCH_")}
    subprocess.run([sys.executable, "-c", _WRITER, json.dumps(args)], cwd=REPO, check=True, timeout=120,
                   env={**env, "PYTHONPATH": str(REPO)})


def test_every_field_comes_back_in_the_layout_the_server_takes(milvus_settings, tmp_path):
    store = _open(milvus_settings, tmp_path)
    x = _unit(3, 1)
    head_like = _unit(3, 2)  # an indexed vector other than the CLIP one, as a head gives
    store.upsert([ProductVector(Product(id="a", title="A", images=("front.jpg", "side.jpg"), preview_image="front.jpg",
                                        extra={"price": "1,299.50", "colour": "red"}), clip=x[0], vector=head_like[0])])
    version = str(store.client.get_server_version())  # "v2.3.5-lite" for the session's standalone
    found = re.match(r"v?(\d+)\.(\d+)", version)
    if found and (int(found[1]), int(found[2])) < (2, 4):  # one vector field, JSON objects only
        assert not store.layout.clip_vector and not store.layout.json_arrays
    else:  # milvus-lite and Milvus 2.4+ take a second vector field
        assert store.layout.clip_vector
    assert np.array_equal(store.vectors(["a"], clip=True)[0], x[0])  # exact: float32 bytes either way
    assert np.allclose(store.vectors(["a"])[0], head_like[0])
    got = store.get(["a"])[0]
    assert got.images == ("front.jpg", "side.jpg") and got.extra == {"price": "1,299.50", "colour": "red"}
    assert [h.product.id for h in store.search(head_like[:1], 1, Filter(ranges={"price": (1000, 2000)}))[0]] == ["a"]
    ids, clips = next(store.scan_vectors(clip=True))
    assert ids == ["a"] and np.array_equal(clips[0], x[0])


def test_this_process_reads_each_of_its_writes_at_once(milvus_settings, tmp_path):
    """Edits back to back, each followed at once by the reads a shopper or an admin would make next."""
    store = _open(milvus_settings, tmp_path)
    x = _unit(40, 3)
    store.upsert([_item(f"p{i}", x[i]) for i in range(20)])
    store.open_index()
    for i in range(20, 30):
        store.upsert([_item(f"p{i}", x[i], source=Source.API)])
        assert store.get([f"p{i}"])[0].source == Source.API
        assert store.search(x[i : i + 1], 1)[0][0].product.id == f"p{i}"
        assert store.delete([f"p{i - 20}"]) == 1  # one written a while ago: found, gone
        assert store.get([f"p{i - 20}"]) == [] and store.delete([f"p{i - 20}"]) == 0
        assert all(h.product.id != f"p{i - 20}" for h in store.search(x[i - 20 : i - 19], 3)[0])
    store.upsert([_item("p25", x[39], category="renamed")])  # the same id again, at once: the second wins
    assert store.get(["p25"])[0].category == "renamed" and np.allclose(store.vectors(["p25"])[0], x[39])
    assert store.delete(["p25"]) == 1 and store.get(["p25"]) == []
    assert store.count() == store.live_index.ntotal == 19
    assert store.stats().categories == {"c": 19}


@pytest.mark.parametrize("milvus_settings", ["milvus-server"], indirect=True)  # a milvus-lite file: one process
def test_another_process_writes_are_seen_once_refresh_has_seen_them(milvus_settings, tmp_path):
    serving = _open(milvus_settings, tmp_path)
    x = _unit(12, 4)
    serving.upsert([_item(f"p{i}", x[i]) for i in range(10)])
    serving.open_index()
    _other_process(milvus_settings, tmp_path, upsert={"elsewhere": x[10].tolist()}, delete=["p3"])
    for _ in range(100):  # the API's watcher calls refresh() every second; here, until it sees the write
        if serving.refresh():
            break
    else:
        raise AssertionError("refresh never saw the other process's write")
    assert serving.search(x[10:11], 1)[0][0].product.id == "elsewhere"  # at once, from then on
    assert serving.get(["p3"]) == [] and serving.live_index.ntotal == serving.count() == 10

    strong = _open(milvus_settings.model_copy(update={"milvus_consistency": "strong"}), tmp_path)
    _other_process(milvus_settings, tmp_path, upsert={"later": x[11].tolist()})
    assert strong.search(x[11:12], 1)[0][0].product.id == "later"  # Strong: no refresh needed


def test_a_write_while_refresh_reads_is_not_overwritten(milvus_settings, tmp_path):
    """refresh() counts the catalogue and then installs what it read; a write through this store landing in
    between (an admin edit while the watcher ticks) must win (it lost: a stale count, 12 for 13)."""
    serving = _open(milvus_settings, tmp_path)
    x = _unit(13, 5)
    serving.upsert([_item(f"p{i}", x[i]) for i in range(10)])
    serving.open_index()
    _open(milvus_settings, tmp_path, open_index=False).upsert([_item(f"p{i}", x[i]) for i in (10, 11)])
    counted = serving.count
    landed: list[int] = []

    def count_then_a_write_lands(**kw):
        found = counted(**kw)
        if not landed:  # once (the write counts again itself)
            landed.append(0)
            landed[0] = serving.upsert([_item("p12", x[12])])
        return found

    serving.count = count_then_a_write_lands
    assert serving.refresh() and landed == [1]
    serving.count = counted
    assert serving.live_index.ntotal == serving.count() == 13
