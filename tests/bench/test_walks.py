"""Smoke test of bench/walks.py: the three walks run, and each lists the repository files its own code lives in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_walks_bench_lists_each_walks_own_files(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "bench" / "walks.py")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    names = result["names"]
    assert {"api/routes/search.py", "core/store.py"} <= set(names["search"])
    assert {"pipeline/runner.py", "pipeline/extraction.py", "pipeline/indexing.py"} <= set(names["build"])
    assert {"api/routes/admin.py", "core/store.py"} <= set(names["upsert"])
    assert "api/routes/admin.py" not in names["search"] and "pipeline/runner.py" not in names["upsert"]
    for walk in ("search", "build", "upsert"):
        assert result[walk] == len(names[walk])
        assert all((REPO / n).is_file() and not n.startswith(("tests/", "bench/")) for n in names[walk]), names[walk]
        assert f"{walk}: {result[walk]} files" in done.stdout
