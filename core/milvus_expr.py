"""Milvus boolean expressions built from a ``Filter``, with every value escaped.

A value a shopper types can never become expression syntax: strings are written as double-quoted
literals with the escapes both Milvus and milvus-lite understand (``\\\\ \\" \\n \\r \\t``), numbers must be
finite, and column names only get here when they match ``FILTER_COLUMN`` (letters, digits, space,
``_ . -``), so they sit inside a quoted JSON key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from core.store import FILTER_COLUMN, Filter

NOTHING = 'id == "" and id != ""'  # admits no product
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def literal(value: str) -> str:
    """A Milvus string literal that evaluates to exactly ``value``."""
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in value) + '"'


def number(value: float) -> str:
    if isinstance(value, bool) or not math.isfinite(float(value)):
        raise ValueError(f"not a finite number: {value!r}")
    return repr(float(value))


def json_key(field: str, column: str) -> str:
    """``field["column"]`` for a filterable extra column."""
    if not FILTER_COLUMN.fullmatch(column):
        raise ValueError(f"column {column!r} cannot be filtered on")
    return f"{field}[{literal(column)}]"


def id_list(ids: Sequence[str]) -> str:
    return "[" + ",".join(literal(i) for i in ids) + "]"


def expression(flt: Filter | None, columns: Mapping[str, str]) -> str:
    """The filter as one expression ('' admits everything). ``columns`` says which extra columns are
    numbers: those compare as numbers (``num``), the rest as text (``extra``), as the local store does."""
    if flt is None:
        return ""
    terms: list[str] = []
    if flt.category is not None:
        terms.append(f"category == {literal(flt.category)}")
    for column, value in flt.equals.items():
        if columns.get(column) == "number":
            try:
                terms.append(f"{json_key('num', column)} == {number(float(value.replace(',', '')))}")
            except ValueError:
                return NOTHING  # a number column never equals a non-number
        else:
            terms.append(f"{json_key('extra', column)} == {literal(value)}")
    for column, (lo, hi) in flt.ranges.items():
        key = json_key("num", column)
        if lo is not None:
            terms.append(f"{key} >= {number(lo)}")
        if hi is not None:
            terms.append(f"{key} <= {number(hi)}")
        if lo is None and hi is None:
            terms.append(f"{key} >= {number(-1e308)}")  # has a number at all
    if flt.exclude_ids:
        terms.append(f"id not in {id_list(flt.exclude_ids)}")
    return " and ".join(terms)
