"""HTTP side of bench/scale.py: start run_api.py on 127.0.0.1, wait until the model is searchable,
read its RSS, time vector searches, filtered searches, admin upserts and deletes."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench._scale_data import category, category_name, product_id, product_index

API_KEY = "scale-bench-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of a process, MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def start_api(repo: Path, env: dict[str, str], port: int, model: str, log: Path,
              timeout: float = 1800) -> tuple[subprocess.Popen[bytes], float]:
    """(process, seconds until /health says ``model`` is searchable)."""
    start = time.perf_counter()
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, str(repo / "run_api.py"), "--port", str(port)], env=env, cwd=repo,
                                stdout=out, stderr=subprocess.STDOUT)
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with {proc.returncode}; see {log}")
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
            if health["models"][model]["searchable"]:
                return proc, time.perf_counter() - start
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the API did not serve {model} within {timeout} s; see {log}")


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, httpx.Response]:
    t = time.perf_counter()
    r = fn(*args, **kwargs)
    elapsed = time.perf_counter() - t
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code} from {r.request.url}: {r.text[:300]}")
    return elapsed, r


def searches(client: httpx.Client, model: str, queries: np.ndarray, sources: np.ndarray | None = None
             ) -> tuple[list[float], list[list[int]]]:
    """(seconds per request, product indices returned). With ``sources`` each query is filtered to the
    category of the product it was copied from (0.1% of the catalogue)."""
    times, found = [], []
    for n, q in enumerate(queries):
        params: dict[str, Any] = {"top_k": 10}
        if sources is not None:
            params["category"] = category_name(int(category(int(sources[n]))))
        t, r = _timed(client.post, f"/{model}/search/vector", params=params, json={"vector": q.tolist()})
        times.append(t)
        found.append([product_index(h["id"]) for h in r.json()["results"] if h["id"].startswith("P")])
    return times, found


def edits(client: httpx.Client, model: str, count: int, image: str, prefix: str = "api-edit"
          ) -> dict[str, list[float]]:
    """Seconds per admin upsert (``count`` new products, the image fetched from the model's data folder and
    embedded by the API) and per delete of each, as the client saw them ("upsert", "delete") and as the
    server's ``took_ms`` says (fetch + embed + commit, without HTTP: "upsert_server", "delete_server") and its
    ``commit_ms`` (the store write until searchable: "upsert_commit", "delete_commit")."""
    headers = {"X-API-Key": API_KEY}
    out: dict[str, list[float]] = {"upsert": [], "delete": [], "upsert_server": [], "delete_server": [],
                                   "upsert_commit": [], "delete_commit": []}
    for i in range(count):
        body = {"id": f"{prefix}-{i}", "title": f"edit {i}", "images": [image], "category": category_name(i),
                "extra": {"price": 9.99}}
        t, r = _timed(client.post, f"/{model}/products", json=body, headers=headers)
        out["upsert"].append(t)
        out["upsert_server"].append(r.json()["took_ms"] / 1000)
        out["upsert_commit"].append(r.json()["commit_ms"] / 1000)
    for i in range(count):
        t, r = _timed(client.delete, f"/{model}/products/{prefix}-{i}", headers=headers)
        out["delete"].append(t)
        out["delete_server"].append(r.json()["took_ms"] / 1000)
        out["delete_commit"].append(r.json()["commit_ms"] / 1000)
    return out


def recall_at_10(found: list[list[int]], truth: np.ndarray) -> float:
    hits = sum(len(set(f[:10]) & {int(x) for x in t}) for f, t in zip(found, truth, strict=False))
    return hits / (10 * len(truth))


def stored_ids_ok(found: list[list[int]], n: int) -> bool:
    """Every hit is a synthetic product that exists (a sanity check on the id mapping)."""
    return all(0 <= i < n and product_id(i).startswith("P") for f in found for i in f)
