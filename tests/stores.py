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
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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
# when it dies: this launcher sends the wrapper a SIGINT when the test session that owns it goes, however it
# goes (a Ctrl-C that skipped the teardown, a kill -9). The owner is the session's controlling pytest process,
# not the xdist worker that happened to start the server: every worker's tests use it until the session ends.
_LAUNCH = """import os, signal, sys, threading, time
owner = int(sys.argv[1])
def watch():
    while True:
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            os.kill(os.getpid(), signal.SIGINT)
            return
        time.sleep(1)
threading.Thread(target=watch, daemon=True).start()
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
    and then a SIGKILL to whatever is left of the group; never outlives its ``owner`` process (default: this
    one)."""

    def __init__(self, data_dir: Path, binaries: Path | None = None, owner: int | None = None) -> None:
        self.data_dir = data_dir
        self.binaries = binaries
        self.owner = owner or os.getpid()
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / "wrapper.log"
        self.pid: int | None = None

    def start(self, timeout: float = 300) -> MilvusStandalone:
        """Start it and wait until it answers. The wrapper unpacks its binaries (250 MB) into ``<data>/bin``
        unless they are there already: ``binaries`` is a folder kept for that across sessions."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.binaries is not None and not (self.data_dir / "bin").exists():
            self.binaries.mkdir(parents=True, exist_ok=True)
            (self.data_dir / "bin").symlink_to(self.binaries, target_is_directory=True)
        with open(self.log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-c", _LAUNCH, str(self.owner), "--data", str(self.data_dir),
                                     "--proxy-port", str(self.port), *_QUICK_COORDINATOR],
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = proc.pid
        if self.owner == os.getpid():
            atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if proc.poll() is not None or time.monotonic() > deadline:
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
        pid, self.pid = self.pid, None
        if pid is not None:
            _end_group(pid)

    def remove_data(self) -> None:
        """Delete the server's data (its logs stay, for a failed run)."""
        shutil.rmtree(self.data_dir / "data", ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie does not: reaped here if it is this process's child)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _end_group(pid: int) -> None:
    """Stop the wrapper ``pid`` (SIGINT: it stops ``milvus run standalone``, then exits), SIGKILL whatever is left
    of its process group, and wait for the etcd port to come back (the next start needs it)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    _alive(pid)  # reap it if it is this process's child
    deadline = time.monotonic() + 30
    while standalone_unavailable() is not None and time.monotonic() < deadline:
        time.sleep(0.2)


# One standalone a test session: its etcd binds port 2379, so only one runs on a machine, and pytest-xdist's
# workers share it (each test in a collection prefix of its own). The first worker to need it starts it; the
# session's controlling process (an xdist worker's parent, or the one process of a serial run) owns it and
# stops it as the session ends. What the workers share - a lock and the server's URI, or why it cannot start -
# lies in a folder named after that process.


def session_owner() -> int:
    """The test session's controlling process: an xdist worker's parent, else this process."""
    return os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()


def _session_folder(owner: int) -> Path:
    return Path(tempfile.gettempdir()) / f"imagesearch-tests-{owner}"


def session_standalone(data_dir: Path, binaries: Path) -> str:
    """The URI of the session's Milvus standalone, started here (data in ``data_dir``) unless another worker has
    started it. Raises RuntimeError saying why where it cannot start; every worker then reads the same reason."""
    shared = _session_folder(session_owner())
    shared.mkdir(exist_ok=True)
    state = shared / "standalone.json"
    with open(shared / "standalone.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held while one worker starts it; released as the file closes
        if state.exists():
            found = json.loads(state.read_text())
            if "failed" in found:
                raise RuntimeError(found["failed"])
            return str(found["uri"])
        server = MilvusStandalone(data_dir, binaries=binaries, owner=session_owner())
        try:
            why = standalone_unavailable()
            if why is not None:
                raise RuntimeError(why)
            server.start()
        except RuntimeError as exc:
            state.write_text(json.dumps({"failed": str(exc)}))
            raise
        state.write_text(json.dumps({"uri": server.uri, "pid": server.pid, "data": str(data_dir)}))
        return server.uri


def stop_session_standalone() -> None:
    """In the session's controlling process as the session ends: stop the standalone a worker started, if any,
    and delete its data (its logs stay, for a failed run)."""
    shared = _session_folder(os.getpid())
    state = shared / "standalone.json"
    if state.exists():
        found = json.loads(state.read_text())
        if "pid" in found:
            _end_group(int(found["pid"]))
            shutil.rmtree(Path(found["data"]) / "data", ignore_errors=True)
    shutil.rmtree(shared, ignore_errors=True)
