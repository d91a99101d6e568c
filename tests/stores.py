"""The two catalogue stores tests run on: "local" (SQLite + FAISS) and "milvus" (real milvus-lite).

A test opts in to both with ``@both_stores`` (it then asks for the ``store`` fixture, directly or through
``store_overrides``); the Milvus variant uses the session's shared milvus-lite server with a collection
prefix of its own, and skips, saying why, only where pymilvus is not installed. ``MilvusServer`` is that
server (``python -m milvus_lite server``) as a process a test can also stop and start again.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

STORES = ("local", "milvus")
both_stores = pytest.mark.parametrize("store", STORES, indirect=True)
NO_PYMILVUS = "the Milvus store needs pymilvus (pip install -r requirements-scale.txt)"


def need_pymilvus() -> None:
    pytest.importorskip("pymilvus", reason=NO_PYMILVUS)


def unique_prefix() -> str:
    """A collection prefix no other test uses (tests share one server)."""
    return f"t{uuid.uuid4().hex[:12]}_"


def milvus_overrides(uri: str, prefix: str | None = None) -> dict[str, str]:
    """Settings overrides (``make_settings(**...)``) for a catalogue in Milvus at ``uri`` (empty: the embedded
    milvus-lite file under models/)."""
    return {"store": "milvus", "milvus_uri": uri, "milvus_prefix": prefix or unique_prefix()}


def as_env(overrides: dict[str, Any]) -> dict[str, str]:
    """The same overrides as environment variables, for a subprocess (run_api.py, run_training.py)."""
    return {f"IMAGESEARCH_{key.upper()}": str(value) for key, value in overrides.items()}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MilvusServer:
    """A milvus-lite gRPC server on 127.0.0.1 (its data in ``data_dir``): what several processes - the API,
    the pipeline, job workers - share, as they would a Milvus standalone."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> MilvusServer:
        self.proc = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data_dir),
                                      "--host", "127.0.0.1", "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, "the milvus-lite server exited"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("the milvus-lite server did not listen in time") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self.proc = None
