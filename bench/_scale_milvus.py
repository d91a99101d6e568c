"""The Milvus of ``bench/scale.py --store milvus``: a milvus-lite gRPC server started for the run, or a server
that runs already (``--milvus-uri``: a Milvus standalone or cluster).

The build process, the store-edits process and the API each open the store, and a milvus-lite file can
be open in one process only, so all three talk to one server (the way replicas share a Milvus standalone or
cluster). The server holds the data, so its RSS is reported beside theirs: the milvus-lite server's own, or
that of the process listening on an outside server's port on this machine (``--milvus-pid`` names another).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bench._scale_http import free_port, rss_mb


class MilvusServer:
    """``python -m milvus_lite server`` on a free 127.0.0.1 port over ``data_dir``; a context manager."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.data_dir, self.log = data_dir, log
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> float:
        """Start the server; seconds until its port accepts connections."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(self.log, "ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir",
                                          str(self.data_dir), "--host", "127.0.0.1", "--port", str(self.port)],
                                         stdout=out, stderr=subprocess.STDOUT)
        while time.perf_counter() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the milvus-lite server exited with {self.proc.returncode}; see {self.log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return time.perf_counter() - start
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the milvus-lite server did not listen within {timeout} s; see {self.log}")

    def rss(self) -> dict[str, float] | None:
        """VmRSS (now) and VmHWM (peak since it started) of the server process, MB."""
        assert self.proc is not None, "the server is not running"
        return rss_mb(self.proc.pid)

    def stop(self) -> None:
        """Ctrl-C (the server drains requests and closes its data directory), then kill if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> MilvusServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def dir_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder`` (the server's data on disk)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class OutsideMilvus:
    """A Milvus server the bench did not start: used as it is, and left running."""

    data_dir: Path | None = None

    def __init__(self, uri: str, pid: int | None = None) -> None:
        self.uri = uri
        self.pid = pid if pid is not None else listening_pid(uri)

    def start(self, timeout: float = 60) -> float:
        """Check that it answers; seconds it took."""
        from pymilvus import MilvusClient

        start = time.perf_counter()
        MilvusClient(uri=self.uri, timeout=timeout).close()
        return time.perf_counter() - start

    def rss(self) -> dict[str, float] | None:
        """VmRSS and VmHWM of its process (None where it is not on this machine)."""
        return rss_mb(self.pid) if self.pid is not None else None

    def stop(self) -> None:
        """Nothing: the server is not the bench's."""


def listening_pid(uri: str) -> int | None:
    """The process listening on ``uri``'s port on this machine (the server, for its RSS), or None."""
    url = urlparse(uri)
    if url.hostname not in ("127.0.0.1", "localhost", "::1") or url.port is None:
        return None
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        return None
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == url.port and conn.pid:
            return int(conn.pid)
    return None


def drop_collections(uri: str, token: str, prefix: str) -> list[str]:
    """Drop the collections whose names start with ``prefix`` (what a run created on an outside server)."""
    from pymilvus import MilvusClient

    client: Any = MilvusClient(uri=uri, token=token)
    try:
        names = [n for n in client.list_collections() if str(n).startswith(prefix)]
        for name in names:
            client.drop_collection(name)
        return names
    finally:
        client.close()
