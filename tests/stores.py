"""The catalogue stores tests run on: "local" (SQLite + FAISS), "milvus" (real milvus-lite) and "milvus-server"
(a real Milvus server: the ``milvus`` package's standalone, 2.3.5, started for the session, or the one
IMAGESEARCH_TEST_MILVUS_URI names).

The store contract (tests/core/test_store.py ``make_store``) and the pipeline's demo build run on all three.
The API tests opt in with ``@both_stores``: local and the real Milvus server (they then ask for the ``store``
fixture, directly or through ``store_overrides``); milvus-lite runs the same store code, and keeps its own
tests where it is the deployment: embedded in a process (the contract, the demo build, ``--copy-store``) and
as a shared server that goes down (tests/api/test_build_then_serve.py). The Milvus variants use the session's
server with a collection prefix of their own. The milvus-lite ones skip, saying why, only where pymilvus is
not installed; the server ones also where the standalone cannot start here (not installed, or its etcd's port
2379 taken), and fail instead under IMAGESEARCH_TEST_REQUIRE_MILVUS_SERVER=1 (CI sets it).
``MilvusServer`` is the milvus-lite server (``python -m milvus_lite server``) as a process a test can stop and
start again; ``MilvusStandalone`` is the real one.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_port

STORES = ("local", "milvus", "milvus-server")
both_stores = pytest.mark.parametrize("store", ("local", "milvus-server"), indirect=True)
NO_PYMILVUS = "the Milvus store needs pymilvus (pip install -r requirements-scale.txt)"
# read once, before any test's environment is cleaned (tests/conftest.py's _isolated_env)
OUTSIDE_URI = os.environ.get("IMAGESEARCH_TEST_MILVUS_URI", "").strip()
REQUIRE_SERVER = os.environ.get("IMAGESEARCH_TEST_REQUIRE_MILVUS_SERVER", "") not in ("", "0")
ETCD_PORT = 2379  # the standalone's embedded etcd binds it whatever its --etcd-port says


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


class MilvusServer:
    """A milvus-lite gRPC server on 127.0.0.1 (its data in ``data_dir``): what several processes - the API,
    the pipeline, job workers - share, as they would a Milvus standalone."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
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


# The wrapper (``milvus-server``) runs ``milvus run standalone`` and stops it on SIGINT, but not on SIGTERM or
# when it dies: this launcher asks the kernel to send the wrapper a SIGINT when the test process that started
# it goes, however it goes (a Ctrl-C that skipped the teardown, a kill -9).
_LAUNCH = """import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)
import milvus
sys.argv = ["milvus-server", *sys.argv[2:]]
milvus.main()
"""


# The query coordinator checks its tasks every second; every 100 ms, releasing a collection (an index rebuild)
# takes 0.2 s instead of 1 s. Nothing a store does depends on it.
# a 20 ms time tick (200 ms by default): the tests' Strong reads (the first after each write) wait for a tick, and
# the suite's server tests spend half their time in them; what a read sees is the same at any tick
_QUICK_COORDINATOR = ("--extra-config", "queryCoord.checkInterval=100", "--extra-config", "proxy.timeTickInterval=20",
                      "--extra-config", "queryCoord.distPullInterval=100")


def standalone_unavailable() -> str | None:
    """Why a Milvus standalone cannot start on this machine, or None."""
    if importlib.util.find_spec("pymilvus") is None:
        return NO_PYMILVUS
    if importlib.util.find_spec("milvus") is None:
        return "the Milvus standalone server is not installed (pip install -r requirements-milvus-server.txt)"
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as etcd binds: closed connections do not count
        try:
            sock.bind(("127.0.0.1", ETCD_PORT))
        except OSError:
            return (f"port {ETCD_PORT} is taken (another Milvus standalone's etcd?): the standalone's embedded etcd "
                    f"needs it, so only one can run on a machine")
    return None


class MilvusStandalone:
    """A real Milvus standalone server (C++, with its embedded etcd and message queue) on a free 127.0.0.1 port,
    its data and logs in ``data_dir``. Started in a process group of its own, stopped by SIGINT to the wrapper
    and then a SIGKILL to whatever is left of the group; never outlives this process."""

    def __init__(self, data_dir: Path, binaries: Path | None = None) -> None:
        self.data_dir = data_dir
        self.binaries = binaries
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / "wrapper.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 300) -> MilvusStandalone:
        """Start it and wait until it answers. The wrapper unpacks its binaries (250 MB) into ``<data>/bin``
        unless they are there already: ``binaries`` is a folder kept for that across sessions."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.binaries is not None and not (self.data_dir / "bin").exists():
            self.binaries.mkdir(parents=True, exist_ok=True)
            (self.data_dir / "bin").symlink_to(self.binaries, target_is_directory=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-c", _LAUNCH, str(os.getpid()), "--data", str(self.data_dir),
                                          "--proxy-port", str(self.port), *_QUICK_COORDINATOR],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Milvus standalone did not start; see {self.log} and {self.data_dir / 'logs'}")
            time.sleep(1)
        return self

    def _answers(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        from pymilvus import MilvusClient

        try:
            found = MilvusClient(uri=self.uri, timeout=10)
            try:
                found.list_collections()
            finally:
                found.close()
        except Exception:  # not serving yet
            return False
        return True

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # the wrapper stops `milvus run standalone`, then exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything the wrapper left behind
        proc.wait(10)
        deadline = time.monotonic() + 30  # the next start needs the etcd port back
        while standalone_unavailable() is not None and time.monotonic() < deadline:
            time.sleep(0.2)

    def remove_data(self) -> None:
        """Delete the server's data (its logs stay, for a failed run)."""
        shutil.rmtree(self.data_dir / "data", ignore_errors=True)
