"""The set-up check's probes of this machine under the settings: torch's device, each CLIP backbone, the
folders, the ports, the admin key and the store engines.

Each probe returns ``Check`` lines (``core.setup_check``) and imports what it reports on when it runs:
torch for the device, transformers to load a backbone's config, pymilvus to reach a Milvus server.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import sqlite3
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from core.config import Settings
from core.model_config import ModelSpec
from core.setup_check import REINSTALL, SCALE_INSTALL, Check, Status, importable, installed_version
from core.types import Precision, StoreKind

LOW_DISK_BYTES = 1 << 30  # below this a build soon stops on a full disk (images, vectors, index)
UI_PORT = 8501  # run_streamlit.py's default
_PROBE_TIMEOUT = 3.0
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0", "::1", "")


def check_device(settings: Settings) -> Check:
    """Where and how the encoder will run: CUDA or CPU, the precision ``auto`` picks, bf16, threads."""
    if not importable("torch"):
        return Check("device", Status.FAIL, "torch cannot be imported, so nothing can be embedded", REINSTALL)
    import torch

    from core.encoder import cpu_runs_bf16, resolve_device, resolve_precision
    from core.errors import BackboneLoadError

    try:
        device = resolve_device(settings.device)
    except BackboneLoadError as exc:
        return Check("device", Status.FAIL, exc.message,
                     "set IMAGESEARCH_DEVICE=auto (or cpu), or install a CUDA build of torch on a machine with a GPU")
    precision = str(resolve_precision(settings.precision, device)).removeprefix("torch.")
    bf16 = cpu_runs_bf16()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = settings.torch_threads or torch.get_num_threads()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []
    facts = {"device": device, "cuda": bool(gpus), "gpus": gpus, "precision": precision, "cpu_bf16": bf16,
             "torch_threads": threads, "interop_threads": torch.get_num_interop_threads(), "cpus": cpus}
    where = f"cuda ({len(gpus)} x {gpus[0]})" if device == "cuda" else \
        "cpu (CUDA available but IMAGESEARCH_DEVICE=cpu)" if gpus else "cpu (no CUDA device)"
    detail = (f"{where}; precision {settings.precision.value} -> {precision}; CPU bf16 "
              f"{'native' if bf16 else 'not native'}; torch threads {threads} "
              f"(inter-op {facts['interop_threads']}) of {cpus} CPUs")
    if device == "cpu" and settings.precision in (Precision.FP16, Precision.BF16) and not (
            settings.precision == Precision.BF16 and bf16):
        return Check("device", Status.WARN, detail + f"; {precision} is emulated on this CPU (slow)",
                     "set IMAGESEARCH_PRECISION=auto", facts=facts)
    return Check("device", Status.OK, detail, facts=facts)


def _meant_as_folder(backbone: str) -> bool:
    """A name the encoder would take for a hub id only because no such folder exists (``models/clip``,
    ``./clip``, ``/opt/clip``): an absolute or dotted path, or one whose parent folder exists here."""
    path = Path(backbone).expanduser()
    return path.is_absolute() or backbone.startswith((".", "~")) or backbone.count("/") > 1 or \
        (len(path.parts) > 1 and path.parent.is_dir())


def _folder_backbone(name: str, folder: Path, users: list[str]) -> Check:
    missing = [what for what, names in (("weights", _WEIGHTS), ("tokenizer", ("tokenizer.json", "vocab.json")),
                                        ("preprocessor_config.json", ("preprocessor_config.json",)))
               if not any((folder / n).is_file() for n in names)]
    fix = "copy the whole checkpoint folder (config.json, model.safetensors, tokenizer, preprocessor_config.json)"
    if not importable("transformers"):
        return Check(name, Status.FAIL, "transformers cannot be imported", REINSTALL)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(folder))
    except Exception as exc:  # whatever transformers raises for a broken folder, the merchant sees its first line
        return Check(name, Status.FAIL, f"folder {folder}: config does not load ({type(exc).__name__}: "
                                        f"{str(exc).splitlines()[0][:160]})", fix)
    if config.model_type != "clip":
        return Check(name, Status.FAIL, f"folder {folder} holds a {config.model_type!r} model, not CLIP",
                     "point IMAGESEARCH_CLIP_MODEL (or model.json's backbone) at a CLIP checkpoint")
    if missing:
        return Check(name, Status.FAIL, f"folder {folder}: config loads, but no {', '.join(missing)}", fix)
    facts = {"folder": str(folder), "dim": config.projection_dim, "image_size": config.vision_config.image_size,
             "models": users}
    return Check(name, Status.OK, f"folder {folder}: CLIP config loads ({config.projection_dim}-d vectors, "
                                  f"{config.vision_config.image_size} px images); used by {', '.join(users)}",
                 facts=facts)


def _hub_cached(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return all(isinstance(try_to_load_from_cache(repo, f), str) for f in ("config.json", "model.safetensors"))
    except Exception:  # a name the hub client rejects is simply not cached
        return False


def check_backbone(backbone: str, users: list[str], hub_reachable: Callable[[], bool]) -> Check:
    """The CLIP weights models load: a folder whose config loads, or a hub id that is cached or reachable."""
    from core.encoder import OFFLINE_HINT

    name = f"backbone {backbone}"
    folder = Path(backbone).expanduser()
    if folder.is_dir():
        return _folder_backbone(name, folder, users)
    if folder.exists() or _meant_as_folder(backbone):
        return Check(name, Status.FAIL, f"no folder {folder} (used by {', '.join(users)})",
                     f"put the checkpoint there, or {OFFLINE_HINT}")
    if _hub_cached(backbone):
        return Check(name, Status.OK, f"hub id, in the local hub cache; used by {', '.join(users)}",
                     facts={"hub_id": backbone, "cached": True, "models": users})
    facts = {"hub_id": backbone, "cached": False, "models": users}
    if hub_reachable():
        return Check(name, Status.OK, f"hub id, not cached yet: the model hub answers, so the first build downloads "
                                      f"it; used by {', '.join(users)}", facts={**facts, "hub_reachable": True})
    why = "HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") else \
        f"no connection within {_PROBE_TIMEOUT:.0f} s"
    return Check(name, Status.FAIL, f"hub id, not cached, and the model hub cannot be reached ({why}); used by "
                                    f"{', '.join(users)}", f"without network access, {OFFLINE_HINT}",
                 facts={**facts, "hub_reachable": False})


def check_folder(name: str, path: Path) -> Check:
    """Writable (a real file is created and removed), with the free space; a missing one must be creatable."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    where = "" if existing == path else f" (not there yet; created in {existing} on first use)"
    fix = f"make {existing} writable for this user, or set IMAGESEARCH_ROOT to a writable folder"
    if not existing.is_dir():
        where = f"{path} is a file" if existing == path else f"{path}: {existing} is a file"
        return Check(f"folder {name}", Status.FAIL, f"{where}, not a folder",
                     f"move {existing} away, or set IMAGESEARCH_ROOT to another folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return Check(f"folder {name}", Status.FAIL, f"{path}{where} is not writable ({exc.strerror})", fix)
    free = shutil.disk_usage(existing).free
    detail = f"{path}{where} writable, {free / 1e9:.1f} GB free"
    facts = {"path": str(path), "exists": existing == path, "free_bytes": free}
    if free < LOW_DISK_BYTES:
        return Check(f"folder {name}", Status.WARN, detail + ": a build may stop on a full disk",
                     "free some space on that disk, or set IMAGESEARCH_ROOT to a folder on a larger one", facts=facts)
    return Check(f"folder {name}", Status.OK, detail, facts=facts)


def _answers(port: int, path: str) -> str:
    """What this project's server at 127.0.0.1:port says on its health path; empty when it is not ours."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=1.0) as response:
            body = response.read(65536).decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""
    if path == "/health":
        try:
            data = json.loads(body)
        except ValueError:
            return ""
        return f"this project's API (health: {data.get('status')})" if isinstance(data, dict) and "models" in data \
            else ""
    return "this project's shop page" if body.strip() == "ok" else ""


def check_port(name: str, host: str, port: int, health_path: str, flag: str) -> Check:
    """Free (a socket binds to it as the server would), or taken: by this project's running server, or not."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and tornado bind
        try:
            sock.bind((host, port))
            return Check(name, Status.OK, f"{host}:{port} free", facts={"port": port, "free": True})
        except OSError as exc:
            problem = exc
    facts = {"port": port, "free": False}
    if problem.errno == errno.EADDRINUSE:
        ours = _answers(port, health_path)
        if ours:
            return Check(name, Status.OK, f"{host}:{port} in use by {ours}, already running", facts=facts)
        return Check(name, Status.FAIL, f"{host}:{port} is in use by another program",
                     f"stop that program, or start on another port with {flag}", facts=facts)
    return Check(name, Status.FAIL, f"cannot listen on {host}:{port} ({problem.strerror})",
                 f"pick another port with {flag}", facts=facts)


def check_ports(settings: Settings, api_port: int | None, ui_port: int | None) -> list[Check]:
    """The API's port (where IMAGESEARCH_API_URL points, unless given) and the shop page's."""
    url = urlparse(settings.api_url)
    checks = []
    if api_port is None and (url.hostname or "") not in _LOCAL_HOSTS:
        checks.append(Check("api port", Status.OK, "IMAGESEARCH_API_URL points at another machine: not checked here"))
    else:
        port = api_port or url.port or (443 if url.scheme == "https" else 80)
        checks.append(check_port("api port", "127.0.0.1", port, "/health", "`python run_api.py --port N` "
                                 "(and IMAGESEARCH_API_URL=http://127.0.0.1:N for the shop page)"))
    checks.append(check_port("ui port", "0.0.0.0", ui_port or UI_PORT, "/_stcore/health",
                             "`python run_streamlit.py --port N`"))
    return checks


def check_admin_key(settings: Settings) -> Check:
    """Set or not; the key itself is never shown."""
    if not settings.api_key:
        return Check("admin key", Status.WARN, "IMAGESEARCH_API_KEY is not set: the admin routes (product edits, "
                                               "reloads, background jobs) answer 403", "set IMAGESEARCH_API_KEY to a "
                     "long random string (e.g. `python -c \"import secrets; print(secrets.token_urlsafe(32))\"`)",
                     facts={"set": False})
    if len(settings.api_key) < 16:
        return Check("admin key", Status.WARN, "IMAGESEARCH_API_KEY is set but shorter than 16 characters",
                     "use a long random string", facts={"set": True})
    return Check("admin key", Status.OK, "IMAGESEARCH_API_KEY is set (not shown)", facts={"set": True})


def check_stores(settings: Settings, specs: list[ModelSpec]) -> list[Check]:
    """The engine each model's catalogue uses (model.json's store, else IMAGESEARCH_STORE), one line per engine."""
    local = [s.name for s in specs if s.store_for(settings) == StoreKind.LOCAL]
    milvus = [s for s in specs if s.store_for(settings) == StoreKind.MILVUS]
    checks = []
    if local and not importable("faiss"):
        checks.append(Check("store local", Status.FAIL, f"{', '.join(local)}: SQLite + FAISS, but faiss cannot be "
                                                        "imported", REINSTALL, facts={"models": local}))
    elif local:
        faiss = installed_version("faiss-cpu") or installed_version("faiss-gpu") or "-"
        checks.append(Check("store local", Status.OK, f"{', '.join(local)}: SQLite {sqlite3.sqlite_version} + FAISS "
                                                      f"{faiss} under {settings.models_dir}/<model>/",
                            facts={"models": local}))
    if milvus:
        checks.append(_check_milvus(settings, milvus))
    return checks


def _server(uri: str) -> tuple[str, int] | None:
    """(host, port) of a Milvus server URI; None for a milvus-lite file."""
    if not re.match(r"^(https?|tcp)://", uri):
        return None
    parsed = urlparse(uri)
    return parsed.hostname or "localhost", parsed.port or (443 if parsed.scheme == "https" else 19530)


def _check_milvus(settings: Settings, specs: list[ModelSpec]) -> Check:
    """The Milvus URI answers (a server: a TCP connect, then the client's own connect, then its collections);
    a milvus-lite file is not opened (that would lock it against a running API), only its engine checked."""
    from core.errors import ImageSearchError

    names = [s.name for s in specs]
    name = "store milvus"
    if not importable("pymilvus"):
        return Check(name, Status.FAIL, f"{', '.join(names)}: Milvus, but pymilvus is not installed", SCALE_INSTALL)
    try:  # the store's own module needs faiss too (the index kinds and calibration are shared)
        import core.milvus_store  # noqa: F401
        from core.milvus_client import client, close_clients, collection_name, milvus_uri, redacted_uri
    except ImportError as exc:
        return Check(name, Status.FAIL, f"{', '.join(names)}: Milvus, but the store's code cannot load ({exc})",
                     REINSTALL)
    try:
        uri, shown = milvus_uri(settings), redacted_uri(settings)
    except OSError as exc:
        return Check(name, Status.FAIL, f"cannot create the folder of the milvus-lite file ({exc.strerror})",
                     "set IMAGESEARCH_MILVUS_URI, or make the models folder writable")
    server = _server(uri)
    facts = {"models": names, "uri": shown}
    if server is None:
        if not importable("milvus_lite"):
            return Check(name, Status.FAIL, f"{', '.join(names)}: the milvus-lite file {shown}, but milvus-lite is not "
                                            "installed", SCALE_INSTALL, facts=facts)
        state = "exists" if Path(uri).exists() else "created by the first build"
        return Check(name, Status.OK, f"{', '.join(names)}: embedded milvus-lite {installed_version('milvus-lite')}, "
                                      f"file {shown} ({state}; one process at a time)", facts=facts)
    try:
        socket.create_connection(server, timeout=_PROBE_TIMEOUT).close()
    except OSError as exc:
        return Check(name, Status.FAIL, f"nothing answers at {shown} ({exc.strerror or 'timed out'})",
                     "start Milvus there, or fix IMAGESEARCH_MILVUS_URI", facts=facts)
    try:
        found = client(settings)
        built = [n for n in names if found.has_collection(collection_name(settings.milvus_prefix, n))]
    except ImageSearchError as exc:
        return Check(name, Status.FAIL, exc.message, "check IMAGESEARCH_MILVUS_URI and IMAGESEARCH_MILVUS_TOKEN",
                     facts=facts)
    except Exception as exc:  # pymilvus raises its own exception types for refused credentials and the like
        return Check(name, Status.FAIL, f"{shown} answers, but {type(exc).__name__}: {str(exc)[:160]}",
                     "check IMAGESEARCH_MILVUS_TOKEN and the server's logs", facts=facts)
    finally:
        close_clients()
    waiting = [n for n in names if n not in built]
    detail = f"{', '.join(names)} at {shown}: answers; " + "; ".join(
        part for part in (f"collections of {', '.join(built)} exist" if built else "",
                          f"{', '.join(waiting)}: collections created by their first build" if waiting else "") if part)
    return Check(name, Status.OK, detail, facts={**facts, "built": built})
