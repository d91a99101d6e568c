"""The local store's lexical index: found by words and identifiers, repaired when missing or out of step, rebuilt
for other columns, never confused by query syntax."""

from __future__ import annotations

import sqlite3

import numpy as np

from core.config import load_settings
from core.lexical import LexicalConfig, match_expression, query_words
from core.local_store import LocalStore
from core.store import Filter, Product, ProductVector


def _item(pid: str, title: str, **extra: str) -> ProductVector:
    vector = np.random.default_rng(abs(hash(pid)) % 2**32).standard_normal(8).astype(np.float32)
    return ProductVector(Product(id=pid, title=title, category="knitwear", extra=extra),
                         clip=vector / np.linalg.norm(vector))


def _store(tmp_path, **kw) -> LocalStore:
    return LocalStore(tmp_path / "m", load_settings(root=tmp_path), name="m", open_index=False, **kw)


def _ids(hits) -> list[str]:
    return [h.product.id for h in hits]


def test_words_identifiers_and_filters(tmp_path):
    store = _store(tmp_path)
    store.upsert([_item("a", "Merino crème jumper", sku="AX-2041", vendor="Woolly"),
                  _item("b", "Cotton shirt", sku="ZZ-1", vendor="Plain")])
    assert _ids(store.find_words("CREME merino", 5)) == ["a"]  # case and accents folded
    assert _ids(store.find_words("meri", 5)) == ["a"]  # the last word as a prefix
    assert set(_ids(store.find_words("woolly shirt", 5))) == {"a", "b"}  # neither holds both: any word
    assert _ids(store.find_identifier(" AX-2041 ")) == ["a"] and _ids(store.find_identifier("b")) == ["b"]
    assert store.find_identifier("AX-2041", Filter(equals={"vendor": "Plain"})) == []
    assert store.find_words("merino", 5, Filter(category="shoes")) == []
    store.delete(["a"])
    assert store.find_words("merino", 5) == [] and store.find_identifier("AX-2041") == []
    store.close()


def test_a_missing_or_out_of_step_index_is_rebuilt_and_other_columns_rebuild_it(tmp_path):
    store = _store(tmp_path)
    store.upsert([_item("a", "Merino jumper", vendor="Woolly"), _item("b", "Cotton shirt", vendor="Plain")])
    store.close()
    with sqlite3.connect(tmp_path / "m" / "catalogue.db") as conn:  # an earlier release: no index at all
        conn.execute("DROP TRIGGER lexical_insert")
        conn.execute("DROP TABLE lexical")
        conn.execute("DELETE FROM meta WHERE key='lexical'")
    store = _store(tmp_path)
    assert _ids(store.find_words("merino", 5)) == ["a"] and _ids(store.find_words("plain", 5)) == ["b"]
    store.close()
    with sqlite3.connect(tmp_path / "m" / "catalogue.db") as conn:  # an index out of step with the rows
        conn.execute("INSERT INTO lexical(lexical, rowid, lex_title, lex_category, lex_words) "
                     "SELECT 'delete', vid, title, category, 'Woolly' FROM products WHERE id='a'")
    store = _store(tmp_path)
    assert _ids(store.find_words("merino", 5)) == ["a"]
    store.close()
    store = _store(tmp_path, lexical=LexicalConfig(columns=()))  # the extra columns no longer count
    assert store.find_words("plain", 5) == [] and _ids(store.find_words("cotton", 5)) == ["b"]
    store.close()


def test_typed_syntax_is_quoted_words():
    assert query_words('"NEAR(merino* -wool) AND (((') == ["near", "merino", "wool", "and"]
    assert match_expression(["a", "b"], every=False) == '"a" OR "b"*'
    assert len(query_words("word " * 5000)) == 1 and len(query_words(" ".join(f"w{i}" for i in range(99)))) == 32


def test_words_too_common_to_rank_are_ranked_by_the_picture(tmp_path):
    """Where more products hold the words than a search ranks by BM25 ("mug" in 100k of 1M took 130 ms over
    HTTP), the products holding them come by their picture: the nearest holders first (scored exactly where few
    enough hold them, else by a widening look at the picture's neighbours), never one without the words."""
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((60, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = [ProductVector(Product(id=f"p{i}", title=f"{'red mug' if i % 2 else 'blue lamp'} {i}", category="home"),
                           clip=v) for i, v in enumerate(vectors)]
    for exact_max in (100, 10):  # 30 hold "mug": every holder scored, then the picture's nearest looked at
        root = tmp_path / str(exact_max)
        settings = load_settings(root=root, filter_exact_max=exact_max, words_ranked_max=4)
        store = LocalStore(root / "m", settings, name="m")
        store.upsert(items)
        store.open_index()
        for target in (7, 31):
            hits = store.find_words("mug", 5, vector=vectors[target])
            holders = [i for i in range(60) if i % 2]
            nearest = sorted(holders, key=lambda i: -float(vectors[i] @ vectors[target]))[:5]
            assert _ids(hits) == [f"p{i}" for i in nearest]
        assert all(int(h.product.id[1:]) % 2 for h in store.find_words("red mug", 10, vector=vectors[0]))
        assert len(store.find_words("mug", 5)) == 5  # no vector: BM25 over them all, as before
        assert _ids(store.find_words("mug 31", 5, vector=vectors[0])) == ["p31"]  # few hold both: BM25
        store.close()
