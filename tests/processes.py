"""Real processes for crash tests: run_training.py and run_api.py in subprocesses on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import TINY_DUPLICATE_THRESHOLD
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[1]


def env(root: Path, tiny_clip: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESEARCH_")}
    base.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), IMAGESEARCH_ROOT=str(root),
                IMAGESEARCH_CLIP_MODEL=str(tiny_clip), IMAGESEARCH_TORCH_THREADS="1", IMAGESEARCH_DEVICE="cpu",
                IMAGESEARCH_DUPLICATE_THRESHOLD=TINY_DUPLICATE_THRESHOLD,
                IMAGESEARCH_ALLOW_PRIVATE_URLS="1")  # the tests' image servers run on 127.0.0.1
    base.update(extra)
    return base


def training(root: Path, tiny_clip: Path, *args: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(REPO / "run_training.py"), *args, "--no-progress"],
                            env=env(root, tiny_clip, **extra), cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def peak_rss(pid: int | str) -> int:
    """A live process's resident-set high-water mark, bytes (Linux ``VmHWM``: its own, from its exec on; a
    child's ``ru_maxrss`` would count the forking test process's memory too)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


_PEAK_AT_EXIT = """
import atexit, runpy, sys
from tests.processes import peak_rss
out, script = sys.argv[1], sys.argv[2]
atexit.register(lambda: open(out, "w").write(str(peak_rss("self"))))
sys.argv = [script, *sys.argv[3:]]
runpy.run_path(script, run_name="__main__")
"""


def peak_rss_command(peak_file: Path, script: Path, *args: str) -> list[str]:
    """The command running ``script args`` as its own ``__main__`` that writes its peak RSS (bytes) to
    ``peak_file`` as it exits."""
    return [sys.executable, "-c", _PEAK_AT_EXIT, str(peak_file), str(script), *args]


class ApiProcess:
    """``run_api.py`` in a subprocess; ``kill()`` is a SIGKILL, as a crash or the OOM killer would."""

    def __init__(self, root: Path, tiny_clip: Path, *, console: Path | None = None, **extra: str) -> None:
        """``console``: a file for what the process prints (default: discarded)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        out = console.open("wb") if console is not None else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen([sys.executable, str(REPO / "run_api.py"), "--port", str(self.port)],
                                         env=env(root, tiny_clip, **extra), cwd=root, stdout=out,
                                         stderr=subprocess.STDOUT if console is not None else subprocess.DEVNULL)
        finally:
            if console is not None:
                out.close()

    def peak_rss(self) -> int:
        """The process's resident-set high-water mark so far, bytes (Linux: VmHWM)."""
        return peak_rss(self.proc.pid)

    def wait_ready(self, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "run_api.py exited"
            try:
                return httpx.get(f"{self.url}/health", timeout=2).json()
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("run_api.py did not answer in time")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
