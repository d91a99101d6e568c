"""How a product is laid out in a Milvus collection, and what the server can hold natively.

Milvus 2.4 and newer (and milvus-lite) take a second vector field and a JSON array at the top level of a
JSON field; Milvus 2.3 takes neither ("multiple vector fields is not supported", "cannot unmarshal array").
``probe`` asks the server once per process, on a scratch collection, and a new collection records the
``Layout`` it was created with in its meta collection, so every process reads it the same way:

- the raw CLIP vector is a second FLOAT_VECTOR field, or else its float32 bytes, base64, in a VARCHAR of
  the same row (one row per product either way: a write stays one upsert, and a product never has half of
  its vectors; the CLIP vector is only ever read back, never searched);
- the image list is a JSON array, or else a JSON object ``{"list": [...]}``; a product whose images' cache
  files are known is always the object, with them beside the list: ``{"list": [...], "views": [...]}`` (a
  row written before they were kept, an array or an object without ``views``, has none).

- a product's words (``core.lexical``) are a VARCHAR that Milvus's analyzer splits and a BM25 function turns
  into a sparse vector field, in the same row (Milvus 2.5 and newer, and milvus-lite 3; one upsert writes a
  product and its words); a server without full-text search (Milvus 2.3, 2.4) gets no words fields.

A collection made before layouts were recorded (by milvus-lite) has the native layout, without words.
"""

from __future__ import annotations

import base64
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.lexical import LexicalConfig, indexed_texts, words_text
from core.store import FILTER_COLUMN, Product, ProductVector, Source, is_number

FIELDS = ["id", "title", "category", "images", "preview_image", "preview_cache", "extra", "source", "updated_at"]
WORDS = "words"  # the product's folded words, split on spaces by Milvus's analyzer
WORDS_BM25 = "words_bm25"  # their BM25 sparse vector, computed by the server from WORDS
_WORDS_BYTES = 65_535  # a VARCHAR's most
_ANALYZER = {"tokenizer": "standard", "filter": ["lowercase"]}  # our words come folded and split on spaces
_IMAGES_KEY = "list"
_VIEWS_KEY = "views"
_layouts: dict[str, Layout] = {}  # what each server takes natively, probed once per process
_layouts_lock = threading.Lock()


@dataclass(frozen=True)
class Layout:
    """Where a collection keeps the raw CLIP vector and the image list (see the module's docstring)."""

    clip_vector: bool = True  # a second vector field; else base64 float32 in a VARCHAR
    json_arrays: bool = True  # images as a JSON array; else {"list": [...]}
    words: bool = False  # the product's words and their BM25 vector (full-text search); else none

    def to_json(self) -> dict[str, str]:
        return {"clip": "vector" if self.clip_vector else "base64", "images": "array" if self.json_arrays else "object",
                "words": "bm25" if self.words else "none"}

    @classmethod
    def from_json(cls, raw: Any) -> Layout:
        raw = raw if isinstance(raw, dict) else {}
        return cls(clip_vector=raw.get("clip", "vector") == "vector", json_arrays=raw.get("images", "array") == "array",
                   words=raw.get("words") == "bm25")


def probe(client: Any, scratch: str) -> Layout:
    """What the server takes natively, tried on a scratch collection (created and dropped here): a second
    vector field, then a JSON array in a JSON field, then (where a second vector field is taken) a BM25
    function. A refusal is a fallback; any other failure raises."""
    from pymilvus import DataType, MilvusClient
    from pymilvus.exceptions import MilvusException

    def schema(vectors: int) -> Any:
        found = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        found.add_field("id", DataType.VARCHAR, is_primary=True, max_length=16)
        found.add_field("j", DataType.JSON)
        for n in range(vectors):
            found.add_field(f"v{n}", DataType.FLOAT_VECTOR, dim=2)
        return found

    if client.has_collection(scratch):
        client.drop_collection(scratch)
    try:
        client.create_collection(scratch, schema=schema(2))
        two = True
    except MilvusException:
        client.create_collection(scratch, schema=schema(1))
        two = False
    try:
        row = {"id": "probe", "j": ["a"], **{f"v{n}": [1.0, 0.0] for n in range(2 if two else 1)}}
        try:
            client.insert(scratch, [row])
            arrays = True
        except MilvusException:
            arrays = False
    finally:
        client.drop_collection(scratch)
    return Layout(clip_vector=two, json_arrays=arrays, words=two and _takes_words(client, scratch))


def _takes_words(client: Any, scratch: str) -> bool:
    """Whether the server indexes words: a collection with a BM25 function is created and takes a row (Milvus
    2.5+, milvus-lite 3). A refusal at either step is a no."""
    from pymilvus import DataType, MilvusClient
    from pymilvus.exceptions import MilvusException

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=16)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)
    try:
        _add_words(schema)
        client.create_collection(scratch, schema=schema)  # not loaded: an insert needs no index
    except (MilvusException, AttributeError, TypeError, ValueError):  # an older pymilvus or server
        return False
    try:
        client.insert(scratch, [{"id": "probe", "v": [1.0, 0.0], WORDS: "merino probe"}])
        return True
    except MilvusException:
        return False
    finally:
        client.drop_collection(scratch)


def _add_words(schema: Any) -> None:
    from pymilvus import DataType, Function, FunctionType

    schema.add_field(WORDS, DataType.VARCHAR, max_length=_WORDS_BYTES, enable_analyzer=True,
                     analyzer_params=_ANALYZER)
    schema.add_field(WORDS_BM25, DataType.SPARSE_FLOAT_VECTOR)
    schema.add_function(Function(name="words_bm25", function_type=FunctionType.BM25, input_field_names=[WORDS],
                                 output_field_names=[WORDS_BM25]))


def index_words(params: Any, layout: Layout) -> None:
    """Add the words' BM25 index to a new collection's ``params`` (Milvus loads a collection only with every
    vector field indexed), where ``layout`` has words."""
    if layout.words:
        params.add_index(field_name=WORDS_BM25, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")


def server_layout(client: Any, uri: str, scratch: str) -> Layout:
    """What the server at ``uri`` takes natively: probed (on ``scratch``) the first time this process asks."""
    with _layouts_lock:
        layout = _layouts.get(uri)
    if layout is None:
        layout = probe(client, scratch)
        with _layouts_lock:
            _layouts[uri] = layout
    return layout


def known_layout(uri: str) -> Layout | None:
    """What this process has probed the server at ``uri`` to take (None: not probed yet; nothing is asked)."""
    with _layouts_lock:
        return _layouts.get(uri)


def catalogue_schema(layout: Layout, dim: int, clip_dim: int) -> Any:
    """The catalogue collection's fields (its vector indexes are added by the store)."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=1024)
    schema.add_field("title", DataType.VARCHAR, max_length=8192)
    schema.add_field("category", DataType.VARCHAR, max_length=1024)
    schema.add_field("images", DataType.JSON)
    schema.add_field("preview_image", DataType.VARCHAR, max_length=8192)
    schema.add_field("preview_cache", DataType.VARCHAR, max_length=8192)
    schema.add_field("extra", DataType.JSON)
    schema.add_field("num", DataType.JSON)  # the numeric value of each number-like extra column
    schema.add_field("source", DataType.VARCHAR, max_length=8)
    schema.add_field("updated_at", DataType.DOUBLE)
    schema.add_field("digest", DataType.VARCHAR, max_length=64)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    if layout.clip_vector:
        schema.add_field("clip", DataType.FLOAT_VECTOR, dim=clip_dim)
    else:
        schema.add_field("clip", DataType.VARCHAR, max_length=_base64_length(clip_dim))
    if layout.words:
        _add_words(schema)
    return schema


def _base64_length(dim: int) -> int:
    length = 4 * math.ceil(4 * dim / 3)
    if length > 65_535:
        raise ValueError(f"a {dim}-dim CLIP vector does not fit a Milvus VARCHAR; this server needs Milvus 2.4+")
    return length


def encode_row(it: ProductVector, digest: str, stamp: float, layout: Layout, lexical: LexicalConfig) -> dict[str, Any]:
    """A product as one collection row (with its words, ``lexical``'s, where the layout has them)."""
    p = it.product
    extra = {str(k): v for k, v in p.extra.items()}
    num = {k: float(str(v).strip().replace(",", "")) for k, v in extra.items()
           if v not in (None, "") and is_number(v) and FILTER_COLUMN.fullmatch(k)}
    clip = np.asarray(it.clip, dtype=np.float32)
    images: Any = list(p.images)
    if p.view_caches:
        images = {_IMAGES_KEY: images, _VIEWS_KEY: list(p.view_caches)}
    elif not layout.json_arrays:
        images = {_IMAGES_KEY: images}
    row = {"id": p.id, "title": p.title, "category": p.category, "images": images,
           "preview_image": p.preview_image, "preview_cache": p.preview_cache or "", "extra": extra,
           "num": num, "source": p.source.value, "updated_at": stamp, "digest": digest,
           "vector": np.asarray(it.indexed, dtype=np.float32).tolist(),
           "clip": clip.tolist() if layout.clip_vector else base64.b64encode(clip.astype("<f4").tobytes()).decode()}
    if layout.words:
        row[WORDS] = row_words(row, lexical)
    return row


def row_words(row: dict[str, Any], lexical: LexicalConfig) -> str:
    """A row's words, as ``lexical`` picks them (title, category, text extra columns)."""
    return words_text(indexed_texts(str(row.get("title") or ""), str(row.get("category") or ""),
                                    dict(row.get("extra") or {}), lexical), _WORDS_BYTES)


def product_of(row: dict[str, Any]) -> Product:
    """A collection row's product (either layout)."""
    images: Any = row.get("images") or ()
    views: Any = ()
    if isinstance(images, dict):
        images, views = images.get(_IMAGES_KEY) or (), images.get(_VIEWS_KEY) or ()
    return Product(id=str(row["id"]), title=str(row.get("title") or ""), category=str(row.get("category") or ""),
                   images=tuple(images), preview_image=str(row.get("preview_image") or ""),
                   preview_cache=row.get("preview_cache") or None, extra=dict(row.get("extra") or {}),
                   source=Source(row.get("source") or Source.CSV.value), updated_at=float(row.get("updated_at") or 0),
                   view_caches=tuple(views))


def has_views(row: dict[str, Any]) -> bool:
    """Whether a collection row keeps its images' cache files (rows written before they were kept do not)."""
    images = row.get("images")
    return isinstance(images, dict) and _VIEWS_KEY in images


def clip_of(value: Any) -> np.ndarray:
    """A stored raw CLIP vector (either layout) as float32."""
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
    return np.asarray(value, dtype=np.float32)
