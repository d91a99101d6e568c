"""schemathesis (every check, a bounded number of examples) against the running API, with and without the key."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.api.conftest import API_KEY, start_server, stop_server
from tests.security.conftest import guarded_settings

CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.mark.slow
@pytest.mark.parametrize("headers", [[], ["-H", f"X-API-Key: {API_KEY}"]], ids=["anonymous", "admin"])
def test_schemathesis_all_checks_pass(sec_root, tiny_clip, tmp_path, headers):
    st = shutil.which("st") or shutil.which("schemathesis")
    assert st, "schemathesis is in requirements-dev.txt"
    server = start_server(guarded_settings(sec_root, tiny_clip, max_inflight_searches=32))
    try:
        proc = subprocess.run([st, "--config-file", str(CONFIG), "run", f"{server.url}/openapi.json",
                               "--checks", "all", "--workers", "1", *headers],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
    finally:
        stop_server(server)
    failures = proc.stdout[proc.stdout.find("FAILURES"):] if "FAILURES" in proc.stdout else proc.stdout
    assert proc.returncode == 0, "\n".join(line[:300] for line in failures.splitlines()[:80])
