"""Parse a merchant's products.csv (seed format, messy variants, or a Shopify export) into row dicts."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from core.errors import CsvSchemaError

# column name -> accepted aliases (compared lower-cased, spaces/dashes as underscores)
ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("shopify_product_id", "product_id", "id", "sku"),
    "title": ("title", "name", "product_title"),
    "images": ("images", "image_urls", "image_url", "image_list"),
    "preview_image": ("preview_image", "preview", "thumbnail", "image"),
    "category": ("category", "product_type", "type", "product_category"),
}
_SHOPIFY_COLUMNS = ("handle", "image_src")
_SURROGATE = re.compile(r"[\udc80-\udcff]")
MAX_CELL = 64 * 1024  # characters; a longer cell rejects its row (csv's own limit would abort the whole file)


@dataclass
class RawRow:
    """One CSV record: its line number, canonical fields, extra columns, and a decoding problem if any."""

    line: int
    fields: dict[str, str]
    extra: dict[str, str] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)
    bad_encoding: str | None = None
    problem: str | None = None  # why the record itself is unusable: "unparseable row", "cell too large"
    problem_detail: str = ""


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lstrip("\ufeff").strip().lower())


def decode_csv(raw: bytes) -> tuple[str, str]:
    """(text, encoding label). Invalid UTF-8 is kept as surrogates so the rows holding it can be rejected;
    a file with no valid UTF-8 text beyond ASCII at all is read as Windows-1252 (an Excel export)."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    text = raw.decode("utf-8", errors="surrogateescape")
    if not any(ord(ch) > 0x7F and not _SURROGATE.match(ch) for ch in text):
        return raw.decode("cp1252", errors="replace"), "cp1252"
    return text, "utf-8 (some rows invalid)"


def _column_map(header: list[str], model: str) -> dict[str, int]:
    normalised = [_norm(h) for h in header]
    mapping: dict[str, int] = {}
    for canonical, aliases in ALIASES.items():
        for alias in aliases:
            if alias in normalised and normalised.index(alias) not in mapping.values():
                mapping[canonical] = normalised.index(alias)
                break
    missing = [c for c in ("id", "title") if c not in mapping]
    if "images" not in mapping and "preview_image" not in mapping:
        missing.append("images")
    if missing:
        accepted = "; ".join(_accepted(c) for c in missing)
        raise CsvSchemaError(model, f"products.csv is missing required column(s) {', '.join(missing)} "
                                    f"(found: {', '.join(h.strip() for h in header) or 'nothing'}); "
                                    f"accepted names: {accepted}")
    return mapping


def _accepted(column: str) -> str:
    names = ALIASES[column] + (ALIASES["preview_image"] if column == "images" else ())
    return f"{column}: " + " / ".join(names)


DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


def detect_delimiter(text: str) -> str:
    """The header line's delimiter: whichever of comma, semicolon, tab and pipe it holds most of outside
    quotes (Excel in many European locales writes semicolons; some exports use tabs or pipes). Comma on a
    tie."""
    header = re.sub(r'"[^"]*"', "", text.split("\n", 1)[0])
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > counts[","] else ","


Record = tuple[int, list[str] | None, str | None, str]  # line, cells (None when unparseable), problem, detail


def _records(text: str, delimiter: str = ",") -> Iterator[Record]:
    """Every non-blank record with its first line; an unparseable or oversized one comes with its problem
    instead, and reading goes on with the next."""
    # csv's field limit raises mid-file and would end the whole read: lift it, and judge cells ourselves
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, skipinitialspace=False)
    line = 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            start, line = line, reader.line_num + 1
            yield start, None, "unparseable row", str(exc)
            continue
        start, line = line, reader.line_num + 1
        if record and any(cell.strip() for cell in record):
            longest = max(len(cell) for cell in record)
            if longest > MAX_CELL:
                yield start, record, "cell too large", f"{longest} characters; the limit is {MAX_CELL}"
            else:
                yield start, record, None, ""


def read_rows(text: str, model: str, *, delimiter: str | None = None,
              include_inactive: bool = False) -> Iterator[RawRow]:
    """Yield one RawRow per non-blank record (seed format) or per product (Shopify export). The
    delimiter is detected from the header line unless given; ``include_inactive`` keeps a Shopify
    export's draft, archived and unpublished products (else they come back with a ``problem``)."""
    records = _records(text, delimiter or detect_delimiter(text))
    try:
        _, header, problem, detail = next(records)
    except StopIteration:
        raise CsvSchemaError(model, "products.csv is empty") from None
    if header is None or problem:
        raise CsvSchemaError(model, f"products.csv has an unreadable header: {problem} ({detail})")
    names = [_norm(h) for h in header]
    if all(c in names for c in _SHOPIFY_COLUMNS):
        yield from _shopify_rows(header, records, include_inactive)
        return
    mapping = _column_map(header, model)
    used = set(mapping.values())
    for line, record, problem, detail in records:
        if record is None or problem:
            pid = record[mapping["id"]][:200] if record and len(record) > mapping["id"] else ""
            yield RawRow(line=line, fields={"id": pid}, problem=problem, problem_detail=detail)
            continue
        cells = record + [""] * (len(header) - len(record))
        row = RawRow(line=line, fields={k: cells[i].strip() for k, i in mapping.items()},
                     extra={header[i].strip().lstrip("\ufeff"): cells[i].strip()
                            for i in range(len(header)) if i not in used and cells[i].strip()})
        row.bad_encoding = _bad_encoding(header, cells)
        yield row


def _bad_encoding(header: list[str], cells: list[str]) -> str | None:
    """The first column holding undecodable bytes (cells beyond the header count too)."""
    for i, cell in enumerate(cells):
        if _SURROGATE.search(cell):
            name = header[i].strip() if i < len(header) else f"#{i + 1}"
            return _SURROGATE.sub("?", name) or "?"
    return None


_INACTIVE_STATUS = ("draft", "archived")
_PUBLISHED = ("published", "published_on_online_store")


def _shopify_rows(header: list[str], records: Iterator[Record], include_inactive: bool = False) -> Iterator[RawRow]:
    """Shopify product export: one row per variant or image, grouped by Handle (the first row carries
    the title, Status and Published). A product's ``price`` is its lowest Variant Price (what a shop
    shows as "from"). Draft, archived and unpublished products come back with a ``skipped: ...``
    problem unless ``include_inactive``."""
    names = [_norm(h) for h in header]
    col = {n: i for i, n in reversed(list(enumerate(names)))}
    groups: dict[str, RawRow] = {}
    positioned: dict[str, list[tuple[int, str]]] = {}  # handle -> (image_position, src)
    prices: dict[str, list[str]] = {}
    for line, record, problem, detail in records:
        if record is None or problem:
            # its handle is unknown: only this row goes
            yield RawRow(line=line, fields={}, problem=problem, problem_detail=detail)
            continue
        cells = record + [""] * (len(header) - len(record))

        def get(n: str, cells: list[str] = cells) -> str:
            return cells[col[n]].strip() if n in col else ""

        handle = get("handle")
        row = groups.get(handle)
        if row is None:
            row = groups[handle] = RawRow(line=line, fields={"id": handle, "title": "", "category": ""})
        row.fields["title"] = row.fields["title"] or get("title")
        row.fields["category"] = row.fields["category"] or get("product_category") or get("type")
        for key in ("status", *_PUBLISHED):
            if get(key) and key not in row.fields:
                row.fields[key] = get(key).lower()
        for key in ("vendor", "tags"):
            if get(key) and key not in row.extra:
                row.extra[key] = get(key)
        if get("variant_price"):
            prices.setdefault(handle, []).append(get("variant_price"))
        position = get("image_position")
        if get("image_src"):
            positioned.setdefault(handle, []).append((int(position) if position.isdigit() else 10**6,
                                                      get("image_src")))
        row.bad_encoding = row.bad_encoding or _bad_encoding(header, cells)
    for handle, row in groups.items():
        row.images = [src for _, src in sorted(positioned.get(handle, []), key=lambda p: p[0])]
        if handle in prices:
            row.extra["price"] = lowest_price(prices[handle])
        if not include_inactive:
            row.problem, row.problem_detail = _inactive(row.fields)
        for key in ("status", *_PUBLISHED):
            row.fields.pop(key, None)
        yield row


def _inactive(fields: dict[str, str]) -> tuple[str | None, str]:
    """Why a Shopify product is not for sale (draft, archived, unpublished), or (None, "")."""
    status = fields.get("status", "")
    if status in _INACTIVE_STATUS:
        return f"skipped: {status} product", f"Status is {status}"
    for key in _PUBLISHED:
        if fields.get(key) in ("false", "no", "0"):
            return "skipped: unpublished product", f"{key.replace('_', ' ').capitalize()} is FALSE"
    return None, ""


def lowest_price(prices: list[str]) -> str:
    """The lowest of a product's variant prices, as written in the CSV; the first when none is a number."""
    numeric = []
    for text in prices:
        try:
            numeric.append((float(text.replace(",", "")), text))
        except ValueError:
            continue
    return min(numeric)[1] if numeric else prices[0]


class ImageListError(ValueError):
    """The images cell cannot be read as a list of references."""


def parse_image_list(cell: str) -> list[str]:
    """A JSON array of refs, a single ref, or a comma/pipe separated list; tolerates doubled quotes
    and trailing commas. Raises ImageListError when it looks like JSON but cannot be repaired."""
    cell = cell.strip()
    if not cell:
        return []
    if cell.startswith("["):
        return _parse_json_list(cell)
    sep = "|" if "|" in cell else ("," if "," in cell else None)
    parts = cell.split(sep) if sep else [cell]
    return [p.strip().strip("'\"").strip() for p in parts if p.strip().strip("'\"").strip()]


def _parse_json_list(cell: str) -> list[str]:
    attempts = [cell, cell.replace('""', '"'), re.sub(r",\s*]", "]", cell.replace('""', '"')),
                re.sub(r",\s*]", "]", cell.replace('""', '"').replace("'", '"'))]
    for attempt in attempts:
        try:
            value = json.loads(attempt)
        except json.JSONDecodeError:
            continue
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [v.strip() for v in value if v.strip()]
        raise ImageListError("images must be a JSON array of strings")
    raise ImageListError("malformed images JSON")
