"""A catalogue collection's ``<collection>__meta`` collection: one JSON value per key, shared by every replica.

It holds the store's write state - the generation, the counts by source and category, the filterable columns,
moved together by one upsert after every write - and what the collection was made with or last given: the
head, the vector dimension, the layout, the vector index's description and the calibration. The write state is
read fast and merged with this process's own last one (``core.milvus_consistency``); the other values read
Strong while one this process wrote is pending.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from core.milvus_client import ensure_meta_collection
from core.milvus_collection import Collection
from core.milvus_expr import id_list
from core.store import FILTER_COLUMN, is_number

STATE = ("generation", "counts", "columns")  # the write state: one upsert writes all three


class Meta:
    """The meta collection of ``io``'s collection, through its client, error mapping and consistency."""

    def __init__(self, io: Collection) -> None:
        self._io = io
        self.name = io.name + "__meta"
        self._cache: dict[str, tuple[int | None, Any]] = {}
        self._loading = False

    def ensure(self) -> None:
        """Create the meta collection unless it exists, and load it: a new one loads while the catalogue's own
        collection is created (2.5 s less per new catalogue on a Milvus server); its first read waits for it."""
        self._loading = bool(self._io.call(ensure_meta_collection, self._io.client, self.name, wait=False))

    def _loaded(self) -> None:
        if self._loading:
            self._io.call(self._io.client.load_collection, self.name)
            self._loading = False

    def get(self, key: str, default: Any = "") -> Any:
        return self.many([key]).get(key, default)

    def many(self, keys: Sequence[str], *, strong: bool = False) -> dict[str, Any]:
        """Several meta values in one query (absent keys are left out), this process's own writes included: the
        write state alone is read fast and merged with this process's last one; ``strong`` reads every
        process's writes."""
        self._loaded()
        io, writes = self._io, self._io.writes
        kw = {"filter": f"key in {id_list(keys)}", "output_fields": ["key", "value"]}
        if strong or any(k not in STATE for k in keys):
            rows = io.read(writes.meta, io.client.query, self.name, strong=strong, **kw)
        else:
            rows = io.call(io.client.query, self.name, consistency_level=io.fast(), **kw)
        found = {str(r["key"]): json.loads(r["value"]) for r in rows}
        if any(k in STATE for k in keys):
            merged = writes.newest_state({k: found[k] for k in STATE if k in found})
            found.update({k: merged[k] for k in keys if k in STATE and k in merged})
        return found

    def set(self, values: Mapping[str, Any]) -> None:
        rows = [{"key": k, "value": json.dumps(v), "v": [0.0, 0.0]} for k, v in values.items()]
        self._io.call(self._io.client.upsert, self.name, rows)
        if any(k not in STATE for k in values):
            self._io.writes.meta.wrote()

    def cached(self, key: str, seen: int | None, load: Callable[[], Any]) -> Any:
        """``load()``'s value, kept while the generation this process has seen stays ``seen`` (None: no
        generation to key it by, so it is read afresh)."""
        found = self._cache.get(key)
        if seen is not None and found is not None and found[0] == seen:
            return found[1]
        value = load()
        self._cache[key] = (seen, value)
        return value

    def forget(self, *keys: str) -> None:
        """Drop cached values (all of them when no key is named): they are read afresh."""
        for key in keys or list(self._cache):
            self._cache.pop(key, None)

    def commit(self, removed: Iterable[tuple[str, str]], added: Iterable[tuple[str, str]],
               extras: Sequence[dict[str, Any]], cap: int) -> int:
        """After a write: the next generation, the (source, category) counts moved by the deltas and any new
        filterable column in ``extras`` (up to ``cap``), written in one upsert (read fast: this process's last
        write state counts even where the server does not show it yet). Two processes writing in the same
        moment may each miss the other's delta (the generation still moves on); the next build recounts."""
        state = self.many(STATE)
        counts = state.get("counts") or {}
        source, category = Counter(counts.get("source") or {}), Counter(counts.get("category") or {})
        for sign, pairs in ((-1, removed), (1, added)):
            for src, cat in pairs:
                source[src] += sign
                category[cat] += sign
        gen = max(int(state.get("generation", 0)) + 1, 1)
        self.write_state({"generation": gen, "columns": columns_after(dict(state.get("columns") or {}), extras, cap),
                          "counts": {"source": {k: v for k, v in source.items() if v > 0},
                                     "category": {k: v for k, v in category.items() if v > 0}}})
        return gen

    def set_counts(self, source: Mapping[str, int], category: Mapping[str, int]) -> None:
        """Replace the counts by source and category (a build's exact recount), the generation left as it is."""
        state = self.many(STATE)
        self.write_state({"generation": int(state.get("generation", 0)), "columns": state.get("columns") or {},
                          "counts": {"source": dict(source), "category": dict(category)}})

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """The products by source and by category (named, sorted) as the last write left them."""
        counts = self.get("counts", {}) or {}
        by_source = {k: int(v) for k, v in (counts.get("source") or {}).items() if int(v) > 0}
        cats = {k: int(v) for k, v in sorted((counts.get("category") or {}).items()) if k and int(v) > 0}
        return by_source, cats

    def write_state(self, state: dict[str, Any]) -> None:
        self.set(state)
        self._io.writes.wrote_state(state)
        self.forget("columns")


def columns_after(known: dict[str, str], extras: Sequence[dict[str, Any]], cap: int) -> dict[str, str]:
    """The filterable columns after a write of rows with these extra values: a new one is a number column
    while every value it has held is a number, text for good once one is not; up to ``cap`` columns (later
    new ones stay plain metadata, as in the local store)."""
    kinds = dict(known)
    for extra in extras:
        for key, value in extra.items():
            if value in (None, "") or not FILTER_COLUMN.fullmatch(key):
                continue
            if key not in kinds and len(kinds) >= cap:
                continue
            kind = "number" if kinds.get(key, "number") == "number" and is_number(value) else "text"
            kinds[key] = "text" if known.get(key) == "text" else kind
    return kinds
