"""Smoke test of bench/scale.py: a tiny store built, edited and served end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_scale_bench_runs_end_to_end_and_ends_with_its_figures(tmp_path):
    cmd = [sys.executable, str(REPO / "bench" / "scale.py"), "--products", "2000", "--dim", "32", "--queries", "30",
           "--recall-queries", "20", "--filtered", "10", "--edits", "3", "--store-edits", "5",
           "--keep", str(tmp_path / "work")]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("products", "dim", "build_s", "build_peak_rss_mb", "index_bytes", "api_start_s", "api_rss_mb",
                "search_p50_ms", "search_p99_ms", "filtered_p50_ms", "upsert_p50_ms", "delete_p50_ms",
                "recall_at_10", "index_type", "store_upsert_p50_ms", "store_delete_p50_ms"):
        assert key in result, key
    assert (result["products"], result["dim"], result["index_type"]) == (2000, 32, "flat")
    assert result["recall_at_10"] == 1.0  # a flat index is exact
    assert result["index_bytes"] > 2000 * 32 * 4
