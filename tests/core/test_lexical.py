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
