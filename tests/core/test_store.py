"""The catalogue store's contract, on both implementations: the embedded one (real SQLite, real FAISS) and
Milvus (real milvus-lite, skipped with the reason where pymilvus is not installed). Writes bump the
generation, searches honour filters exactly (a hostile value stays a value), every index type stays
correct under edits, another process's writes are picked up, API products survive CSV writes. Local
only: metadata-only edits keep the vector's key, tombstones, self-repair and the legacy migration."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from core.config import load_settings
from core.lexical import LexicalConfig
from core.local_store import LocalStore
from core.store import Filter, Product, ProductVector, Source
from core.types import IndexType
from tests.stores import STORES, milvus_overrides, need_pymilvus

DIM = 32


def _vectors(n: int, seed: int = 0, clusters: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, DIM))
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _items(vectors: np.ndarray, start: int = 0, source: Source = Source.CSV) -> list[ProductVector]:
    return [ProductVector(Product(id=f"p{start + i}", title=f"Product {start + i}", category=f"c{(start + i) % 50}",
                                  extra={"price": f"{(start + i) % 100}.5", "vendor": f"v{(start + i) % 3}"},
                                  source=source), clip=v) for i, v in enumerate(vectors)]


@pytest.fixture
def settings(tmp_path):
    return load_settings(root=tmp_path, flat_max_products=500, hnsw_max_products=3000, ivfsq_min_products=4500,
                         ivfpq_min_products=6000, filter_exact_max=200)


def _store(tmp_path, settings, **kw) -> LocalStore:
    return LocalStore(tmp_path / "models" / "m", settings, name="m", **kw)


@pytest.fixture(params=STORES)
def make_store(request, tmp_path, settings):
    """A factory of stores of one kind over the same catalogue (a second one plays another process of the
    same machine): local, milvus (an embedded milvus-lite file) or milvus-server (the session's real Milvus)."""
    opened = []
    if request.param == "milvus-server":
        settings = settings.model_copy(update=milvus_overrides(request.getfixturevalue("milvus_standalone")))

    def make(**kw):
        if request.param == "local":
            store = _store(tmp_path, settings, **kw)
        else:
            need_pymilvus()
            from core.milvus_store import MilvusStore

            store = MilvusStore(tmp_path / "models" / "m", settings, name="m", **kw)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def _exact(vectors: np.ndarray, ids: list[str], query: np.ndarray, k: int) -> list[str]:
    order = np.argsort(-(vectors @ query), kind="stable")[:k]
    return [ids[i] for i in order]


def _recalls_and_survives_edits(store, x: np.ndarray) -> None:
    """recall@10 >= 0.9 on 50 stored vectors; then delete a third and move one product's vector: searches
    never return a deleted product and find the moved one."""
    n = len(x)
    ids = [f"p{i}" for i in range(n)]
    found = sum(len(set(_exact(x, ids, q, 10)) & {h.product.id for h in store.search(q[None], 10)[0]})
                for q in x[:50])
    assert found / 500 >= 0.9
    gone = ids[: n // 3]
    store.delete(gone)
    store.upsert([ProductVector(Product(id="p5000000", title="new"), clip=x[0])])
    hits = store.search(x[:20], 10)
    assert all(h.product.id not in set(gone) for row in hits for h in row)
    # its own vector, stored as float16 (32-d components are large, so up to about 1e-4 off)
    assert hits[0][0].product.id == "p5000000" and hits[0][0].score == pytest.approx(1.0, abs=5e-4)


def test_writes_bump_the_generation_and_read_back(make_store):
    store = make_store()
    x = _vectors(100)
    assert store.upsert(_items(x)) == 100 and store.count() == 100 and store.generation() >= 1
    assert store.upsert(_items(x)) == 0  # unchanged (same digest empty: same vector and metadata)
    renamed = _items(x[:1])[0]
    renamed = ProductVector(Product(**{**renamed.product.__dict__, "title": "Renamed"}), clip=renamed.clip)
    before = store.generation()
    store.upsert([renamed])
    assert store.get(["p0"])[0].title == "Renamed" and store.generation() > before
    store.upsert([ProductVector(renamed.product, clip=x[1])])
    assert store.delete(["p1", "missing"]) == 1 and store.count() == 99
    stats = store.stats()
    assert stats.columns == {"price": "number", "vendor": "text"} and stats.by_source == {"csv": 99}
    assert np.allclose(store.vectors(["p0"])[0], x[1], atol=1e-3)  # the local store keeps float16
    with pytest.raises(KeyError):
        store.vectors(["p1"])
    assert [p.id for p in store.get(["p3", "nope", "p2"])] == ["p3", "p2"]


def test_a_metadata_only_edit_keeps_the_vectors_key(tmp_path, settings):
    store = _store(tmp_path, settings)
    x = _vectors(100)
    store.upsert(_items(x))
    renamed = _items(x[:1])[0]
    renamed = ProductVector(Product(**{**renamed.product.__dict__, "title": "Renamed"}), clip=renamed.clip)
    store.upsert([renamed])
    assert store.changes_since(1).empty  # nothing to re-index
    store.upsert([ProductVector(renamed.product, clip=x[1])])
    changes = store.changes_since(2)
    assert len(changes.added_keys) == 1 and len(changes.removed_keys) == 1


@pytest.mark.parametrize("n,kind", [(300, IndexType.FLAT), (2000, IndexType.HNSW), (4000, IndexType.IVF),
                                    (5000, IndexType.IVFSQ), (7000, IndexType.IVFPQ)])
def test_every_index_type_is_chosen_by_size_tuned_and_stays_correct_under_edits(tmp_path, settings, n, kind):
    x = _vectors(n, seed=n)
    store = _store(tmp_path, settings)
    store.upsert(_items(x))
    live = store.open_index()
    assert live is not None and live.kind == kind
    info = json.loads((store.folder / "index.json").read_text())
    assert info["kind"] == kind.value and info["generation"] == store.generation()
    if kind != IndexType.FLAT:
        assert info["tuning"]["reason"] and info["tuning"]["tried"]
    # a selective filter is scored over its whole subset (the quantised types' vectors come from memory for
    # ivfsq, from the store for ivfpq), and the hits' scores are exact
    mask = np.array([i % 50 == 7 for i in range(n)])
    subset_ids = [f"p{i}" for i in range(n) if i % 50 == 7]
    for q in x[:5]:
        hits = store.search(q[None], 5, Filter(category="c7"))[0]
        assert [h.product.id for h in hits] == _exact(x[mask], subset_ids, q, 5)
        assert np.allclose([h.score for h in hits], np.sort(x[mask] @ q)[::-1][:5], atol=1e-3)
    store.upsert([ProductVector(Product(id="later", title="later"), clip=-x[1])])  # after the save: replayed
    store.close()
    reopened = _store(tmp_path, settings)  # the saved index is loaded and catches up, not rebuilt
    live = reopened.live_index
    assert live is not None and live.kind == kind and live.info.built_at == info["built_at"]
    assert reopened.search(-x[1:2], 1)[0][0].product.id == "later"
    reopened.delete(["later"])
    _recalls_and_survives_edits(reopened, x)


def test_filters_are_exact_within_a_small_subset_and_correct_when_broad(make_store):
    x = _vectors(4000, seed=3)
    store = make_store()
    store.upsert(_items(x))
    store.open_index()
    ids = np.array([f"p{i}" for i in range(4000)])
    cats = np.array([f"c{i % 50}" for i in range(4000)])
    prices = np.array([float(f"{i % 100}.5") for i in range(4000)])
    for q in x[:10]:
        narrow = Filter(category="c7")  # 80 products: under filter_exact_max, scored exactly
        mask = cats == "c7"
        assert [h.product.id for h in store.search(q[None], 10, narrow)[0]] == _exact(x[mask], list(ids[mask]), q, 10)
        ranged = Filter(equals={"vendor": "v1"}, ranges={"price": (10, 20)})
        got = store.search(q[None], 10, ranged)[0]
        assert got and all(h.product.extra["vendor"] == "v1" and 10 <= float(h.product.extra["price"]) <= 20
                           for h in got)
        broad = store.search(q[None], 10, Filter(ranges={"price": (0, 80)}))[0]  # 81%: over-fetch + filter
        assert len(broad) == 10 and all(float(h.product.extra["price"]) <= 80 for h in broad)
        assert [h.product.id for h in broad][:5] == _exact(x[prices <= 80], list(ids[prices <= 80]), q, 10)[:5]
    assert store.search(x[:1], 5, Filter(category="nope"))[0] == []
    excluded = store.search(x[:1], 5, Filter(exclude_ids=("p0",)))[0]
    assert excluded and all(h.product.id != "p0" for h in excluded)


def test_hnsw_tombstones_are_compacted_in_the_background(tmp_path, settings):
    x = _vectors(2500, seed=5)
    store = _store(tmp_path, settings)
    store.upsert(_items(x))
    live = store.open_index()
    assert live is not None and live.kind == IndexType.HNSW and live.ntotal == 2500
    store.delete([f"p{i}" for i in range(1200)])  # past the tombstone share: a background rebuild follows
    deadline = threading.Event()
    for _ in range(100):
        current = store.live_index
        if current is not None and current.ntotal == 1300:
            break
        deadline.wait(0.1)
    assert store.live_index is not None and store.live_index.ntotal == 1300 and store.live_index.dead == 0
    assert all(int(h.product.id[1:]) >= 1200 for h in store.search(x[:5], 10)[0])


def test_a_damaged_or_stale_index_is_repaired_from_the_store(tmp_path, settings, caplog):
    x = _vectors(800, seed=7)
    store = _store(tmp_path, settings)
    store.upsert(_items(x))
    store.open_index()
    store.close()
    other = _store(tmp_path, settings, open_index=False)  # writes after the index was saved: it is stale
    other.upsert(_items(x[:10], start=800))
    other.delete(["p0"])
    other.close()
    reopened = _store(tmp_path, settings)
    assert reopened.live_index is not None and reopened.live_index.info.count == 809
    assert reopened.search(x[:1], 1)[0][0].product.id == "p800"
    reopened.close()
    for f in (tmp_path / "models" / "m").glob("index-*.faiss"):
        f.write_bytes(b"garbage")
    repaired = _store(tmp_path, settings)
    assert "rebuilding it from the store" in caplog.text
    assert repaired.live_index is not None and repaired.live_index.info.count == 809


def test_another_process_writes_are_picked_up_by_refresh(make_store):
    x = _vectors(600, seed=9)
    serving = make_store()
    serving.upsert(_items(x[:500]))
    serving.open_index()
    writer = make_store(open_index=False)
    writer.upsert(_items(x[500:], start=500))
    writer.delete(["p1"])
    assert serving.refresh()
    assert serving.search(x[550:551], 1)[0][0].product.id == "p550"
    assert serving.live_index is not None and serving.live_index.info.count == 599
    assert not serving.refresh()  # nothing new


def test_hit_vectors_outlive_a_delete_made_after_the_search(make_store):
    """Collapsing near-duplicates reads the hits' vectors after the search: a product another process deleted
    in between must not fail the search (it did on Milvus: KeyError, a 500)."""
    x = _vectors(50, seed=21)
    store = make_store()
    store.upsert(_items(x))
    store.open_index()
    hits = store.search(x[:1], 5)[0]
    make_store(open_index=False).delete([h.product.id for h in hits])
    ids = [int(h.product.id[1:]) for h in hits]
    assert np.allclose(store.hit_vectors(hits), x[ids], atol=1e-3)  # float16 in the local store


def test_api_products_are_kept_by_csv_writes_unless_asked(make_store):
    x = _vectors(20, seed=11)
    store = make_store()
    store.upsert(_items(x[:10]))
    store.upsert([ProductVector(Product(id="p3", title="Edited in the admin", source=Source.API), clip=x[15])])
    assert store.upsert(_items(x[:10]), keep_api=True) == 0
    assert store.get(["p3"])[0].title == "Edited in the admin"
    removed = store.delete_missing(iter([f"p{i}" for i in range(5)]), sources=[Source.CSV])
    assert removed == 5 and store.get(["p3"])  # p5..p9 went; p3 is the API's
    assert store.delete_missing(iter([]), sources=[Source.CSV, Source.API]) == 5


def test_a_legacy_file_build_is_migrated_with_nothing_lost(tmp_path, settings):
    from core.catalogue_store import open_store
    from core.model_config import ModelSpec

    folder = tmp_path / "models" / "old"
    folder.mkdir(parents=True)
    x = _vectors(6, seed=13)
    rows = [{"id": f"L{i}", "title": f"Legacy {i}", "category": "a", "preview_image": f"images/{i}.jpg",
             "preview_cache": None, "images": [f"images/{i}.jpg"], "extra": {"price": "3"}} for i in range(6)]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    np.save(folder / "embeddings.npy", x)
    np.save(folder / "clip_embeddings.npy", x[:5])
    (folder / "embedding_ids.json").write_text(json.dumps([f"L{i}" for i in range(5)]))  # L5 was an admin edit
    (folder / "manifest.json").write_text(json.dumps({"num_products": 6, "dim": DIM}))
    store = open_store(settings, ModelSpec(name="old"))
    assert store.count() == 6 and store.stats().by_source == {"csv": 5, "api": 1}
    assert store.search(x[5:6], 1)[0][0].product.id == "L5"
    assert (folder / "legacy" / "metadata.jsonl").is_file() and not (folder / "metadata.jsonl").exists()


# the products table as the release before float16 storage wrote it (float32 blobs, no ``half`` column)
_FLOAT32_RELEASE_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('generation', '1'), ('schema', '1');
CREATE TABLE products(vid INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, title TEXT NOT NULL,
    category TEXT NOT NULL DEFAULT '', images TEXT NOT NULL DEFAULT '[]', preview_image TEXT NOT NULL DEFAULT '',
    preview_cache TEXT, extra TEXT NOT NULL DEFAULT '{}', source TEXT NOT NULL, updated_at REAL NOT NULL,
    gen INTEGER NOT NULL, digest TEXT NOT NULL DEFAULT '', clip BLOB NOT NULL, vector BLOB);
CREATE INDEX products_gen ON products(gen);
CREATE INDEX products_category ON products(category);
CREATE INDEX products_source ON products(source);
CREATE TABLE dead(vid INTEGER PRIMARY KEY, gen INTEGER NOT NULL, at REAL NOT NULL);
CREATE INDEX dead_gen ON dead(gen);
CREATE TABLE columns(name TEXT PRIMARY KEY, kind TEXT NOT NULL);
"""


def test_a_products_cached_views_are_kept_with_it_and_learnt_by_a_row_that_never_had_them(make_store):
    store = make_store()
    x = _vectors(2, seed=31)
    old = Product(id="p0", title="Shirt", images=("a.jpg", "b.jpg"))  # as an earlier release wrote it
    assert store.upsert([ProductVector(old, clip=x[0], digest="d0")]) == 1
    assert store.get(["p0"])[0].view_caches == ()
    seen = Product(id="p0", title="Shirt", images=("a.jpg", "b.jpg"), view_caches=("ab/a1.jpg", ""))
    assert store.upsert([ProductVector(seen, clip=x[0], digest="d0")]) == 1  # same build, now with its views
    got = store.get(["p0"])[0]
    assert got.view_caches == ("ab/a1.jpg", "") and got.cached_view(0) == "ab/a1.jpg" and got.cached_view(1) is None
    assert store.upsert([ProductVector(seen, clip=x[0], digest="d0")]) == 0  # nothing new: nothing written
    assert store.search(x[:1], 1)[0][0].product.view_caches == ("ab/a1.jpg", "")


def _float32_release(tmp_path, columns: tuple[str, ...], rows: list[tuple]):
    """A catalogue.db as the float32 release wrote it, holding ``rows`` of CSV products (an open connection)."""
    import sqlite3

    folder = tmp_path / "models" / "m"
    folder.mkdir(parents=True)
    conn = sqlite3.connect(folder / "catalogue.db")
    conn.executescript(_FLOAT32_RELEASE_SCHEMA)
    conn.executemany(f"INSERT INTO products ({', '.join(columns)}, source, updated_at, gen) "
                     f"VALUES ({', '.join('?' * len(columns))}, 'csv', 0, 1)", rows)
    return conn


def test_a_catalogue_of_an_earlier_release_learns_its_products_cached_views_on_open(tmp_path, settings):
    x = _vectors(3, seed=33)
    conn = _float32_release(tmp_path, ("id", "title", "images", "clip"), [
        (f"p{i}", f"P{i}", json.dumps(refs), v.tobytes())
        for i, (refs, v) in enumerate(zip([["a", "b"], ["c"], ["b", "d"]], x, strict=True))])
    # the pipeline's image records, which that release kept in the same file (and the API read per request)
    conn.execute("CREATE TABLE images(ref TEXT PRIMARY KEY, status TEXT NOT NULL, cache TEXT)")
    conn.executemany("INSERT INTO images VALUES (?,?,?)", [("a", "ok", "0a.jpg"), ("b", "ok", "0b.jpg"),
                                                           ("c", "failed", None)])
    conn.commit()
    conn.close()
    store = _store(tmp_path, settings)
    assert [p.view_caches for p in store.get(["p0", "p1", "p2"])] == [("0a.jpg", "0b.jpg"), (), ("0b.jpg", "")]
    store.close()
    assert [p.view_caches for p in _store(tmp_path, settings).get(["p2"])] == [("0b.jpg", "")]  # once is enough


def test_vectors_are_stored_as_float16_and_read_back_as_float32(tmp_path, settings):
    store = _store(tmp_path, settings)
    x = _vectors(50, seed=21)
    store.upsert(_items(x))
    got = store.vectors([f"p{i}" for i in range(50)])
    assert got.dtype == np.float32 and np.abs(got - x).max() < 1e-3
    widths = {w for (w,) in store.db.reader().execute("SELECT length(clip) FROM products")}
    assert widths == {2 * DIM} and store.dim == DIM
    assert [h.product.id for h in store.search(x[:3], 1)[0]] == ["p0"]


def test_a_catalogue_of_the_float32_release_is_upgraded_on_open_and_keeps_serving(tmp_path, settings, caplog):

    from core.ann import build
    from core.sqlite_db import Database
    from core.sqlite_store import SCHEMA, ProductTable, blob
    from core.types import Metric

    folder = tmp_path / "models" / "m"
    x = _vectors(400, seed=23)
    conn = _float32_release(tmp_path, ("id", "title", "category", "clip"), [
        (f"p{i}", f"Product {i}", f"c{i % 5}", v.astype(np.float32).tobytes()) for i, v in enumerate(x)])
    # a killed upgrade: the column is there and the first rows are float16 already, the rest float32
    conn.execute("ALTER TABLE products ADD COLUMN half INTEGER NOT NULL DEFAULT 0")
    conn.executemany("UPDATE products SET clip=?, half=1 WHERE id=?", [(blob(x[i]), f"p{i}") for i in range(150)])
    conn.commit()
    conn.close()
    # ... and the index that release saved, over its float32 vectors
    ids = np.arange(1, 401, dtype=np.int64)
    build(lambda: iter([(ids, x)]), x, 400, DIM, IndexType.FLAT, Metric.COSINE, settings, generation=1,
          head=None).save(folder)
    saved = json.loads((folder / "index.json").read_text())["file"]
    mixed = ProductTable(Database(folder / "catalogue.db", SCHEMA)).vectors(["p0", "p399"])  # both kinds decode
    assert np.abs(mixed - x[[0, 399]]).max() < 1e-3
    before = (folder / "catalogue.db").stat().st_size

    store = _store(tmp_path, settings)
    rows = store.db.reader().execute("SELECT count(*), min(half), max(length(clip)) FROM products").fetchone()
    assert rows == (400, 1, 2 * DIM)  # every row upgraded
    assert store.db.reader().execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == "2"
    assert (folder / "catalogue.db").stat().st_size < 0.9 * before  # compacted (32-d rows: mostly metadata)
    assert store.live_index is not None and store.live_index.info.file == saved  # the saved index still serves
    assert "rebuilding" not in caplog.text
    assert np.abs(store.vectors([f"p{i}" for i in range(400)]) - x).max() < 1e-3
    assert [h.product.id for h in store.search(x[7:8], 3, Filter(category="c2"))[0]][0] == "p7"
    assert [h.product.id for h in store.search(x[:1], 10)[0]] == _exact(x, [f"p{i}" for i in range(400)], x[0], 10)
    store.upsert([ProductVector(Product(id="new", title="new"), clip=x[3])])
    store.delete(["p3"])
    assert store.search(x[3:4], 1)[0][0].product.id == "new"
    store.close()
    assert _store(tmp_path, settings).count() == 400  # a second open has nothing left to upgrade


@pytest.mark.parametrize("make_store", ["milvus-server"], indirect=True)
@pytest.mark.parametrize("n,kind", [(300, IndexType.FLAT), (2500, IndexType.HNSW), (4000, IndexType.IVF)])
def test_milvus_index_type_follows_size_and_stays_correct_under_edits(make_store, n, kind):
    x = _vectors(n, seed=n)
    store = make_store()
    store.upsert(_items(x))
    live = store.open_index()  # a serving replica only flags an index the catalogue has outgrown
    assert live is not None and live.needs_compaction() == (kind != IndexType.FLAT)
    if live.needs_compaction():  # the build machine's index phase rebuilds it
        live = store.rebuild(save=True)
    assert live.kind == kind and live.info.count == n and not live.needs_compaction()
    _recalls_and_survives_edits(store, x)


HOSTILE = ['c7" or category != "', 'v1\\" || true || "', "line\nbreak", "quote's", 'back\\slash"', "\t tab"]


def test_a_hostile_filter_value_is_only_ever_a_value(make_store):
    x = _vectors(len(HOSTILE) + 10, seed=17)
    store = make_store()
    items = _items(x)
    for i, value in enumerate(HOSTILE):  # products whose category and vendor really are these strings
        p = items[i].product
        items[i] = ProductVector(Product(id=p.id, title=p.title, category=value, extra={"vendor": value}), clip=x[i])
    store.upsert(items)
    store.open_index()
    for i, value in enumerate(HOSTILE):
        assert [h.product.id for h in store.search(x[:1], 20, Filter(category=value))[0]] == [f"p{i}"]
        assert [h.product.id for h in store.search(x[:1], 20, Filter(equals={"vendor": value}))[0]] == [f"p{i}"]
    assert store.search(x[:1], 20, Filter(category='" or 1==1 or "'))[0] == []
    assert [p.id for p in store.get([HOSTILE[0], "p1"])] == ["p1"]


def test_a_conditional_write_never_overwrites_a_newer_edit_or_brings_back_a_delete(make_store):
    """A job reads a product, works on it and writes it back with ``if_version``: an edit or a delete made
    meanwhile (here by another process's store) stands; an untouched product is written."""
    x = _vectors(10, seed=31)
    store = make_store()
    store.upsert(_items(x))
    edited, gone, untouched = store.get(["p0", "p1", "p2"])
    other = make_store(open_index=False)
    other.upsert([ProductVector(Product(**{**edited.__dict__, "title": "Edited meanwhile"}), clip=x[0])])
    other.delete(["p1"])
    late = [ProductVector(p, clip=x[9], if_version=p.updated_at) for p in (edited, gone, untouched)]
    assert store.upsert(late) == 1
    assert store.get(["p0"])[0].title == "Edited meanwhile" and np.allclose(store.vectors(["p0"])[0], x[0], atol=1e-3)
    assert store.get(["p1"]) == [] and np.allclose(store.vectors(["p2"])[0], x[9], atol=1e-3)
    assert store.get(["p2"])[0].updated_at > untouched.updated_at  # every write is a newer version


def test_an_api_delete_outlasts_csv_writes_until_its_row_changes(make_store):
    x = _vectors(6, seed=33)
    store = make_store()
    store.upsert(_items(x))
    store.upsert([ProductVector(Product(id="p5", title="API edit", source=Source.API), clip=x[5])])
    assert store.delete(["p1", "p2", "p5"]) == 3
    assert store.upsert(_items(x), keep_api=True) == 0  # --force, or another row's change: the same rows
    assert store.get(["p1", "p2", "p5"]) == [] and store.deleted_ids(["p0", "p1", "p2", "p5"]) == ["p1", "p2", "p5"]
    changed = _items(x)
    changed[1] = ProductVector(Product(**{**changed[1].product.__dict__, "title": "New row"}), clip=x[1])
    assert store.upsert(changed, keep_api=True) == 1  # p1's CSV row changed after the delete: it is back
    assert store.get(["p1"])[0].title == "New row" and store.deleted_ids(["p1", "p2"]) == ["p2"]
    assert store.upsert(changed, keep_api=True) == 0 and store.get(["p2", "p5"]) == []  # p5's row as first met
    store.upsert([ProductVector(Product(id="p2", title="Re-added", source=Source.API), clip=x[2])])
    assert store.get(["p2"])[0].title == "Re-added" and store.deleted_ids(["p2"]) == []  # an API write ends it
    assert store.delete_missing(iter([f"p{i}" for i in range(5)]), sources=[Source.CSV, Source.API]) == 0
    assert store.deleted_ids(["p5"]) == []  # --drop-api-edits: the CSV is the whole truth again


def test_extra_columns_past_the_setting_stay_plain_metadata(make_store, tmp_path):
    """60 writes of 50 new extra keys each: only IMAGESEARCH_MAX_FILTER_COLUMNS become filterable (and, in
    SQLite, indexed); every value is still stored and served."""
    x = _vectors(60, seed=35)
    store = make_store()
    for n in range(60):
        extra = {"vendor": "v1", **{f"k{n}_{j}": f"{j}" for j in range(50)}}
        store.upsert([ProductVector(Product(id=f"p{n}", title="t", extra=extra), clip=x[n])])
    columns = store.columns()
    assert len(columns) == 64 and columns["vendor"] == "text" and "k59_0" not in columns
    assert store.get(["p59"])[0].extra["k59_49"] == "49"
    if isinstance(store, LocalStore):
        indexes = store.db.reader().execute("SELECT count(*) FROM sqlite_master WHERE type='index' AND "
                                            "name LIKE 'x_%'").fetchone()[0]
        assert indexes == 64


def test_hnsw_counts_stay_true_through_edits_and_a_restart(tmp_path, settings):
    """Products added and deleted after the index was saved never reached it: they are no tombstones (the
    count /health and /models show drifted 5 below the database after 5 add/delete pairs and a restart)."""
    x = _vectors(600, seed=37)
    store = _store(tmp_path, settings)
    store.upsert(_items(x[:590]))
    assert store.open_index().kind == IndexType.HNSW
    for i in range(590, 595):  # through the serving store
        store.upsert(_items(x[i:i + 1], start=i))
        store.delete([f"p{i}"])
    other = _store(tmp_path, settings, open_index=False)  # and through another process's
    for i in range(595, 600):
        other.upsert(_items(x[i:i + 1], start=i))
        other.delete([f"p{i}"])
    other.delete(["p0"])
    store.refresh()
    assert store.live_index.info.count == store.count() == 589
    store.close()
    reopened = _store(tmp_path, settings)
    assert reopened.live_index.kind == IndexType.HNSW and reopened.live_index.info.count == reopened.count() == 589


def test_exact_ids_and_identifier_columns_are_found_on_every_store(make_store):
    store = make_store()
    vectors = _vectors(2)
    store.upsert([ProductVector(Product(id=f"p{i}", title=f"Merino jumper {i}", category="knitwear",
                                        extra={"sku": f"AX-20{i}", "vendor": "Woolly"}), clip=v)
                  for i, v in enumerate(vectors)])
    assert [h.product.id for h in store.find_identifier("AX-201")] == ["p1"]
    assert [h.product.id for h in store.find_identifier("p0")] == ["p0"]
    assert store.find_identifier("AX-201", Filter(category="shoes")) == []
    assert store.find_identifier("Merino") == []


def test_words_find_products_on_every_store_that_has_full_text_search(make_store, request):
    """By words on the local store (FTS5), milvus-lite and Milvus 2.5+ (BM25): an edit is findable by its new
    words at once and not by its old ones, a delete takes its words away, accents and case do not count, only
    model.json's text columns count (a change of them re-indexes every product at the next build), filters
    hold. The Milvus 2.3 server has no full-text search: it says so."""
    store = make_store(lexical=LexicalConfig(columns=("vendor",)))
    vectors = _vectors(4)
    titles = ["Merino jumper", "Crème wool scarf", "Cotton socks", "Levi's 501 jeans"]
    store.upsert([ProductVector(Product(id=f"p{i}", title=t, category="knitwear" if i < 2 else "basics",
                                        extra={"vendor": "Woolly" if i != 2 else "Socko", "note": "merino blend"}),
                                clip=v) for i, (t, v) in enumerate(zip(titles, vectors, strict=True))])
    if "milvus-server" in request.node.callspec.id:  # Milvus 2.3.5: no full-text search, said in one line
        assert "no full-text search" in store.lexical_note and store.find_words("merino", 5) == []
        return
    assert store.lexical_note is None

    def found(text, flt=None):
        return [h.product.id for h in store.find_words(text, 10, flt)]

    assert found("merino") == ["p0"]  # the note column is not a text column of this model: its "merino" is not
    assert found("CREME") == ["p1"] and found("levi's 501")[0] == "p3" and found("socko") == ["p2"]
    assert found("scarf", Filter(category="basics")) == [] and found("woolly", Filter(category="basics")) == ["p3"]
    store.upsert([ProductVector(Product(id="p0", title="Alpaca jumper", category="knitwear",
                                        extra={"vendor": "Woolly"}), clip=vectors[0])])
    assert found("alpaca") == ["p0"] and found("merino") == []
    store.delete(["p1"])
    assert found("creme") == []
    # model.json's text columns change: the next build's index phase indexes every product's words again
    store = make_store(lexical=LexicalConfig(columns=()))
    store.rebuild(save=False)
    assert found("woolly") == [] and found("socko") == [] and found("alpaca") == ["p0"]
