"""Connections to Milvus and the names of a model's collections.

One ``MilvusClient`` per (URI, token) in this process: ``IMAGESEARCH_MILVUS_URI`` is a file path (milvus-lite,
embedded: one process at a time) or ``http://host:19530`` (a Milvus standalone or cluster, 2.3 and newer, with
``IMAGESEARCH_MILVUS_TOKEN``). A model's rows live in ``<prefix><model>``, or, once a restore has filled
``<prefix><model>__r<stamp>``, in the collection the ``collection`` key of ``<prefix><model>__meta`` points to
(one row: every process sees the old collection or the new one, never a mix).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

from core.config import Settings
from core.errors import StoreError, StoreUnavailableError, require_module
from core.milvus_deletes import side_collection
from core.milvus_expr import literal

POINTER_KEY = "collection"  # in <collection>__meta: the collection holding the model's rows since a restore
RESTORED_INFIX = "__r"  # <collection>__r<stamp>: a collection a restore filled
_clients: dict[tuple[str, str], Any] = {}
_clients_lock = threading.Lock()


def collection_name(prefix: str, model: str) -> str:
    """A legal collection name for a model (letters, digits, underscores; distinct per model name)."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", model)
    if safe != model:
        safe += "_" + hashlib.sha1(model.encode()).hexdigest()[:8]
    return (prefix + safe)[:200]


def milvus_uri(settings: Settings) -> str:
    """The configured URI: a server address as given, or a milvus-lite file (relative to the root)."""
    uri = settings.milvus_uri.strip()
    if re.match(r"^(https?|tcp|unix)://", uri):
        return uri
    path = Path(uri) if uri else settings.models_dir / "milvus.db"
    if not path.is_absolute():
        path = settings.root / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


def redacted_uri(settings: Settings) -> str:
    """The URI for messages: no credentials (a user:password@ part is dropped)."""
    return re.sub(r"//[^/@]*@", "//", milvus_uri(settings))


def client(settings: Settings) -> Any:
    """One MilvusClient per (URI, token) in this process (gRPC channels are thread-safe)."""
    pymilvus = require_module("pymilvus", "IMAGESEARCH_STORE=milvus", "pymilvus (and milvus-lite for a local file)")
    uri, token = milvus_uri(settings), settings.milvus_token or ""
    with _clients_lock:
        found = _clients.get((uri, token))
        if found is None:
            logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # we report failures ourselves, once
            # an embedded milvus-lite serves gRPC inside this process and does not implement AllocTimestamp,
            # which pymilvus asks for after every create_index (then goes on): grpc logs each with a traceback
            logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
            try:
                found = _connect(pymilvus, uri, token)
            except Exception as exc:
                raise StoreUnavailableError(_connect_hint(settings, exc)) from None
            _clients[(uri, token)] = found
        return found


def _connect(pymilvus: Any, uri: str, token: str) -> Any:
    """A new client; tried twice, since a server may drop a fresh channel once (gRPC's GOAWAY)."""
    try:
        return pymilvus.MilvusClient(uri=uri, token=token)
    except Exception as exc:
        if "lock" in str(exc).lower():
            raise
        time.sleep(0.5)
        return pymilvus.MilvusClient(uri=uri, token=token)


def close_clients(*, embedded_only: bool = False) -> None:
    """Close this process's Milvus connections and stop its embedded milvus-lite servers (which frees their
    files for another process); with ``embedded_only``, connections to a server stay open for others."""
    with _clients_lock:
        for key, found in list(_clients.items()):
            embedded = not re.match(r"^[a-z]+://", key[0])
            if embedded_only and not embedded:
                continue
            with contextlib.suppress(Exception):  # closing a dead connection: nothing to do
                found.close()
            if embedded:
                with contextlib.suppress(ImportError):
                    from milvus_lite.server_manager import server_manager_instance

                    server_manager_instance.release_server(key[0])
            del _clients[key]


def _connect_hint(settings: Settings, exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    where = redacted_uri(settings)
    if "lock" in text.lower() or "Open local milvus failed" in text:
        return (f"the milvus-lite file {where} is open in another process (an API or a build); stop it, or run "
                f"a shared server (python -m milvus_lite server --data-dir DIR --port 19530) and set "
                f"IMAGESEARCH_MILVUS_URI=http://127.0.0.1:19530")
    if "milvus-lite is required" in text or "milvus_lite" in text:
        return "a local Milvus file needs milvus-lite, which is not installed: pip install -r requirements-scale.txt"
    return f"cannot reach Milvus at {where} ({type(exc).__name__}); check IMAGESEARCH_MILVUS_URI and the token"


def ensure_meta_collection(cl: Any, name: str, *, wait: bool = True) -> bool:
    """Create (unless it exists) and load a ``<collection>__meta`` collection: key -> JSON value (``wait``: as
    ``side_collection``'s)."""
    return side_collection(cl, name, wait=wait, key=("VARCHAR", {"is_primary": True, "max_length": 64}),
                           value=("VARCHAR", {"max_length": 65_535}))


def pointed(cl: Any, base: str, *, load: bool = True) -> str:
    """The collection holding a model's rows: the one ``<base>__meta`` points to after a restore, else ``base``."""
    meta = base + "__meta"
    if load:
        if not cl.has_collection(meta):
            return base
        cl.load_collection(meta)
    rows = cl.query(meta, filter=f"key == {literal(POINTER_KEY)}", output_fields=["value"], consistency_level="Strong")
    return str(json.loads(rows[0]["value"])) if rows else base


def resolve_collection(settings: Settings, model: str) -> str:
    """The collection that holds ``model``'s catalogue now (its own name, or the one a restore filled)."""
    base = collection_name(settings.milvus_prefix, model)
    try:
        return pointed(client(settings), base)
    except StoreUnavailableError:
        raise
    except Exception as exc:
        raise StoreError(model, f"the Milvus store failed ({type(exc).__name__}); see the server log") from None


def switch_collection(settings: Settings, model: str, physical: str) -> str:
    """Point ``model`` at the collection ``physical`` (one upsert of one row: every process opening or
    refreshing the model sees the old collection or the new one, never a mix). Returns the previous one."""
    cl = client(settings)
    base = collection_name(settings.milvus_prefix, model)
    ensure_meta_collection(cl, base + "__meta")
    before = pointed(cl, base)
    cl.upsert(base + "__meta", [{"key": POINTER_KEY, "value": json.dumps(physical), "v": [0.0, 0.0]}])
    return before


def drop_collection(settings: Settings, model: str, physical: str) -> None:
    """Drop a collection a model no longer uses, with its meta collection (the model's own ``__meta`` stays:
    it holds the pointer)."""
    cl = client(settings)
    base = collection_name(settings.milvus_prefix, model)
    for name in (physical,) if physical == base else (physical, physical + "__meta"):
        if cl.has_collection(name):
            cl.drop_collection(name)


def stray_collections(settings: Settings, model: str) -> list[str]:
    """Collections restores of ``model`` filled that the model does not use (a restore killed half-way)."""
    cl = client(settings)
    base = collection_name(settings.milvus_prefix, model)
    current = pointed(cl, base)
    prefix = base + RESTORED_INFIX
    return sorted(n for n in cl.list_collections()
                  if n.startswith(prefix) and not n.endswith("__meta") and n != current)
