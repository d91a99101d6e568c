"""The shared Milvus of ``bench/scale.py --store milvus``: one milvus-lite gRPC server for the run.

The build process, the store-edits process and the API each open the store, and a milvus-lite file can
be open in one process only, so all three talk to one server on 127.0.0.1 (the way replicas share a
Milvus standalone or cluster). The server holds the data, so its RSS is reported beside theirs.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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

    def rss(self) -> dict[str, float]:
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
