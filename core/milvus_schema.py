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

A collection made before layouts were recorded (by milvus-lite) has the native layout.
"""

from __future__ import annotations

import base64
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.store import FILTER_COLUMN, Product, ProductVector, Source, is_number

FIELDS = ["id", "title", "category", "images", "preview_image", "preview_cache", "extra", "source", "updated_at"]
_IMAGES_KEY = "list"
_VIEWS_KEY = "views"
_layouts: dict[str, Layout] = {}  # what each server takes natively, probed once per process
_layouts_lock = threading.Lock()


@dataclass(frozen=True)
class Layout:
    """Where a collection keeps the raw CLIP vector and the image list (see the module's docstring)."""

    clip_vector: bool = True  # a second vector field; else base64 float32 in a VARCHAR
    json_arrays: bool = True  # images as a JSON array; else {"list": [...]}

    def to_json(self) -> dict[str, str]:
        return {"clip": "vector" if self.clip_vector else "base64", "images": "array" if self.json_arrays else "object"}

    @classmethod
    def from_json(cls, raw: Any) -> Layout:
        raw = raw if isinstance(raw, dict) else {}
        return cls(clip_vector=raw.get("clip", "vector") == "vector", json_arrays=raw.get("images", "array") == "array")


def probe(client: Any, scratch: str) -> Layout:
    """What the server takes natively, tried on a scratch collection (created and dropped here): a second
    vector field, then a JSON array in a JSON field. A refusal is a fallback; any other failure raises."""
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
    return Layout(clip_vector=two, json_arrays=arrays)


def server_layout(client: Any, uri: str, scratch: str) -> Layout:
    """What the server at ``uri`` takes natively: probed (on ``scratch``) the first time this process asks."""
    with _layouts_lock:
        layout = _layouts.get(uri)
    if layout is None:
        layout = probe(client, scratch)
        with _layouts_lock:
            _layouts[uri] = layout
    return layout


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
    return schema


def _base64_length(dim: int) -> int:
    length = 4 * math.ceil(4 * dim / 3)
    if length > 65_535:
        raise ValueError(f"a {dim}-dim CLIP vector does not fit a Milvus VARCHAR; this server needs Milvus 2.4+")
    return length


def encode_row(it: ProductVector, digest: str, stamp: float, layout: Layout) -> dict[str, Any]:
    """A product as one collection row."""
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
    return {"id": p.id, "title": p.title, "category": p.category, "images": images,
            "preview_image": p.preview_image, "preview_cache": p.preview_cache or "", "extra": extra,
            "num": num, "source": p.source.value, "updated_at": stamp, "digest": digest,
            "vector": np.asarray(it.indexed, dtype=np.float32).tolist(),
            "clip": clip.tolist() if layout.clip_vector else base64.b64encode(clip.astype("<f4").tobytes()).decode()}


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
