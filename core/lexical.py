"""The lexical index: a model's products by their words (title, category and the text extra columns), SQLite
FTS5 ranked by BM25 beside the products table.

The index is an external-content FTS5 table over a view of the products table, kept in step by triggers: every
product write updates it inside the write's own transaction (an edit is findable by its words when the call
returns, a delete takes them away, a kill leaves both or neither). Which extra columns count is the model's
``lexical_columns`` (model.json; default every text column); a change of that list, an index that is missing
(a database of an earlier release) or out of step is rebuilt with one SQL statement over the rows.

What a user types is never FTS syntax: :func:`query_words` keeps the words alone, and :func:`match_expression`
quotes each one, so quotes, ``*``, ``NEAR``, ``-`` or parentheses are plain characters."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DEFAULT_IDENTIFIERS = ("sku", "barcode", "gtin", "mpn", "ean", "upc")
MAX_QUERY_WORDS = 32  # a pasted page of text is searched by its first words
MAX_IDENTIFIER = 200  # longer text is never an identifier
_WORD = re.compile(r"[^\W_]+")  # what unicode61 keeps as a token: letters and digits; the rest separates
_VERSION = 1
TABLE = "lexical"
WEIGHTS = (4.0, 2.0, 1.0)  # BM25 weight of a word in the title, the category, the extra columns


@dataclass(frozen=True)
class LexicalConfig:
    """Which text a model's products are found by: ``columns`` (the extra columns indexed; None: every text
    one) and ``identifiers`` (columns whose exact value finds its product first, as the id does)."""

    columns: tuple[str, ...] | None = None
    identifiers: tuple[str, ...] = DEFAULT_IDENTIFIERS

    @property
    def signature(self) -> str:
        return json.dumps({"version": _VERSION, "columns": self.columns})


def fold(text: str) -> str:
    """Text as the index compares it: diacritics removed, case folded ("Crème" -> "creme")."""
    if text.isascii():  # most titles: nothing to decompose
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def query_words(text: str) -> list[str]:
    """The distinct words of a query, in order, folded (at most MAX_QUERY_WORDS)."""
    words: list[str] = []
    for word in _WORD.findall(fold(text)):
        if word not in words:
            words.append(word)
            if len(words) == MAX_QUERY_WORDS:
                break
    return words


def match_expression(words: list[str], *, every: bool, prefix_last: bool = True) -> str:
    """An FTS5 MATCH expression of quoted words: all of them (``every``) or any; the last word typed also
    matches as a prefix ("meri" finds "merino"). Words come from :func:`query_words`: no quote inside."""
    terms = [f'"{w}"' for w in words]
    if prefix_last and terms:
        terms[-1] = f'("{words[-1]}" OR "{words[-1]}"*)' if every else f'"{words[-1]}"*'
    return (" AND " if every else " OR ").join(terms)


def matched_words(words: Iterable[str], texts: Iterable[object]) -> list[str]:
    """Which of the query ``words`` a product's texts hold (a word, or the last one as a prefix)."""
    held = set(_WORD.findall(fold(" ".join(str(t) for t in texts if t not in (None, "")))))
    listed = list(words)
    found = [w for w in listed if w in held]
    if listed and listed[-1] not in found and any(h.startswith(listed[-1]) for h in held):
        found.append(listed[-1])
    return found


def indexed_texts(title: str, category: str, extra: Mapping[str, object], config: LexicalConfig) -> list[str]:
    """The texts a product is found by (as the FTS5 index reads them): its title, its category and the text values
    of its extra columns (``config.columns`` only, when set)."""
    wanted = None if config.columns is None else set(config.columns)
    return [title, category, *(v for k, v in extra.items() if isinstance(v, str) and (wanted is None or k in wanted))]


def words_text(texts: Iterable[str], limit: int) -> str:
    """``texts`` as one line of folded words, space-separated, cut to ``limit`` UTF-8 bytes at a word's end: what
    an engine that tokenises on spaces (Milvus's BM25) indexes, so it reads the words :func:`query_words` asks."""
    out: list[str] = []
    size = 0
    for word in _WORD.findall(fold(" ".join(t for t in texts if t))):
        size += len(word.encode()) + (1 if out else 0)
        if size > limit:
            break
        out.append(word)
    return " ".join(out)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _words_sql(extra: str, columns: tuple[str, ...] | None) -> str:
    """SQL for the indexed words of a product's extra JSON: its text values (of ``columns`` only, if given)."""
    keys = "" if columns is None else f" AND key IN ({','.join(_literal(c) for c in columns) or 'NULL'})"
    return f"(SELECT group_concat(value, ' ') FROM json_each({extra}) WHERE type = 'text'{keys})"


def _schema(config: LexicalConfig) -> list[str]:
    cols = config.columns
    row = f"{TABLE}(rowid, lex_title, lex_category, lex_words)"
    gone = f"{TABLE}({TABLE}, rowid, lex_title, lex_category, lex_words)"
    put = f"INSERT INTO {row} VALUES (new.vid, new.title, new.category, {_words_sql('new.extra', cols)});"
    drop = f"INSERT INTO {gone} VALUES ('delete', old.vid, old.title, old.category, {_words_sql('old.extra', cols)});"
    return [
        f"CREATE VIEW {TABLE}_rows AS SELECT vid, title AS lex_title, category AS lex_category, "
        f"{_words_sql('extra', cols)} AS lex_words FROM products",
        f"CREATE VIRTUAL TABLE {TABLE} USING fts5(lex_title, lex_category, lex_words, content='{TABLE}_rows', "
        f"content_rowid='vid', tokenize='unicode61 remove_diacritics 2')",
        f"CREATE TRIGGER {TABLE}_insert AFTER INSERT ON products BEGIN {put} END",
        f"CREATE TRIGGER {TABLE}_delete AFTER DELETE ON products BEGIN {drop} END",
        f"CREATE TRIGGER {TABLE}_update AFTER UPDATE OF title, category, extra ON products BEGIN {drop} {put} END",
    ]


_DROP = [f"DROP TRIGGER IF EXISTS {TABLE}_insert", f"DROP TRIGGER IF EXISTS {TABLE}_delete",
         f"DROP TRIGGER IF EXISTS {TABLE}_update", f"DROP TABLE IF EXISTS {TABLE}", f"DROP VIEW IF EXISTS {TABLE}_rows"]


def in_step(conn: sqlite3.Connection, config: LexicalConfig) -> bool:
    """True when the index exists, was built for ``config`` and holds one entry per product (two counts over
    integer keys: no row is decoded)."""
    row = conn.execute("SELECT value FROM meta WHERE key='lexical'").fetchone()
    if row is None or row[0] != config.signature:
        return False
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name=?", (f"{TABLE}_docsize",)).fetchone() is None:
        return False
    indexed = conn.execute(f"SELECT count(*) FROM {TABLE}_docsize").fetchone()[0]
    return bool(indexed == conn.execute("SELECT count(*) FROM products").fetchone()[0])


def rebuild(conn: sqlite3.Connection, config: LexicalConfig) -> None:
    """(Re)create the index for ``config`` and fill it from the rows, inside the caller's write transaction."""
    for statement in [*_DROP, *_schema(config)]:  # one by one: executescript would commit the transaction
        conn.execute(statement)
    # filled by an INSERT ... SELECT, not FTS5's 'rebuild' (which refuses a content view with json_each)
    conn.execute(f"INSERT INTO {TABLE}(rowid, lex_title, lex_category, lex_words) "
                 f"SELECT vid, lex_title, lex_category, lex_words FROM {TABLE}_rows")
    conn.execute(f"INSERT INTO {TABLE}({TABLE}, rank) VALUES ('rank', 'bm25({', '.join(map(str, WEIGHTS))})')")
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('lexical', ?)", (config.signature,))


def search_sql(columns: str, where: str) -> str:
    """Products matching a MATCH expression (first parameter), filtered by ``where`` (the products table's
    columns), best BM25 first, at most a LIMIT (last parameter); the BM25 relevance last (higher: better).
    Unfiltered, FTS5 ranks alone (``ORDER BY rank LIMIT``: no product row is read but those returned)."""
    if not where:
        return (f"SELECT {columns}, -m.rank FROM (SELECT rowid, rank FROM {TABLE} WHERE {TABLE} MATCH ? "
                f"ORDER BY rank LIMIT ?) AS m JOIN products ON products.vid = m.rowid ORDER BY m.rank")
    return (f"SELECT {columns}, -{TABLE}.rank FROM {TABLE} JOIN products ON products.vid = {TABLE}.rowid "
            f"WHERE {TABLE} MATCH ? AND {where} ORDER BY {TABLE}.rank LIMIT ?")


def index_bytes(conn: sqlite3.Connection) -> int | None:
    """The index's size on disk (its shadow tables' pages), None where SQLite cannot say (no dbstat)."""
    try:
        row = conn.execute("SELECT sum(pgsize) FROM dbstat WHERE name LIKE ?", (f"{TABLE}_%",)).fetchone()
    except sqlite3.Error:
        return None
    return int(row[0] or 0)


def identifier_text(text: str) -> str | None:
    """The query as an identifier to look up (trimmed), None when it cannot be one (empty, long, several lines)."""
    value = text.strip()
    return value if value and len(value) <= MAX_IDENTIFIER and "\n" not in value else None


def identifier_columns(config: LexicalConfig, columns: Mapping[str, str]) -> list[str]:
    """The configured identifier columns the catalogue has (case-blind names), in the catalogue's spelling."""
    wanted = {c.casefold() for c in config.identifiers}
    return [c for c in columns if c.casefold() in wanted]


RRF_K = 60  # the usual reciprocal-rank-fusion constant


def reciprocal_rank_fusion(rankings: Iterable[Iterable[str]], k: int = RRF_K) -> dict[str, float]:
    """Each id's fused score over several rankings (best first): the sum of 1/(k + rank), rank from 1."""
    fused: dict[str, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, start=1):
            fused[key] = fused.get(key, 0.0) + 1.0 / (k + rank)
    return fused
