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
    assert result["recall_at_10"] >= 0.99  # a flat index is exact over the stored (float16) vectors
    assert result["index_bytes"] > 2000 * 32 * 4


@pytest.mark.slow
def test_scale_bench_on_milvus_shares_one_server_between_build_edits_and_api(tmp_path):
    pytest.importorskip("milvus_lite", reason="--store milvus needs milvus-lite (requirements-scale.txt)")
    work = tmp_path / "work"
    cmd = [sys.executable, str(REPO / "bench" / "scale.py"), "--store", "milvus", "--products", "300", "--dim", "16",
           "--queries", "20", "--recall-queries", "10", "--filtered", "5", "--edits", "2", "--store-edits", "3",
           "--keep", str(work)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["store"], result["products"], result["index_type"], result["engine_index_type"]) == \
        ("milvus", 300, "flat", "FLAT")
    assert result["recall_at_10"] == 1.0
    for key in ("milvus_peak_rss_build_mb", "milvus_rss_serving_mb", "api_rss_mb", "store_upsert_p50_ms",
                "store_delete_p50_ms", "upsert_commit_p50_ms", "delete_p50_ms", "filtered_p50_ms"):
        assert result[key] > 0, key
    assert result["data_bytes_build"] > 300 * 16 * 4 * 2  # both vectors of every product, on the server's disk
    assert "Shutting down" in (work / "milvus.log").read_text()  # the server was stopped, not left running
