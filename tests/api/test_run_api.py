"""run_api.py: help, a bad setting is one line and exit 1, and a real start logs to logs/api.log."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESEARCH_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), **extra)
    return env


def test_help():
    out = subprocess.run([sys.executable, str(REPO / "run_api.py"), "--help"], capture_output=True, text=True,
                         env=_env(), timeout=60)
    assert out.returncode == 0 and "--port" in out.stdout and "--host" in out.stdout


def test_bad_setting_is_one_line_and_exit_1(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "run_api.py")], capture_output=True, text=True, cwd=tmp_path,
                         env=_env(IMAGESEARCH_MAX_UPLOAD_BYTES="lots"), timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "IMAGESEARCH_MAX_UPLOAD_BYTES" in out.stderr


@pytest.mark.slow
def test_real_start_serves_and_logs(built_root, tiny_clip, tmp_path):
    port = free_port()
    env = _env(IMAGESEARCH_ROOT=str(built_root), IMAGESEARCH_CLIP_MODEL=str(tiny_clip), IMAGESEARCH_DEVICE="cpu")
    proc = subprocess.Popen([sys.executable, str(REPO / "run_api.py"), "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, health = time.monotonic() + 90, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert health and health["status"] == "healthy", proc.stdout.read().decode() if proc.poll() else health
        httpx.get(f"http://127.0.0.1:{port}/nope/products/1")
    finally:
        proc.terminate()
        proc.wait(30)
    log = (built_root / "logs" / "api.log").read_text()
    assert "GET /health 200" in log and "GET /nope/products/1 404" in log
