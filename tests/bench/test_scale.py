"""Smoke test of bench/scale.py: a tiny store built, edited and served end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
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
def test_scale_bench_measures_a_milvus_server_it_did_not_start_and_leaves_nothing_there(tmp_path, milvus_standalone):
    """--milvus-uri: the build, the store edits and the API share the running server; its RSS is that of the
    process listening on its port; the run's collections (its own prefix) are gone afterwards. (The milvus-lite
    server the bench starts without --milvus-uri is the same code path past the start.)"""
    from pymilvus import MilvusClient

    prefix = f"benchtest{uuid.uuid4().hex[:8]}_"
    cmd = [sys.executable, str(REPO / "bench" / "scale.py"), "--milvus-uri", milvus_standalone, "--products", "300",
           "--dim", "16", "--queries", "20", "--recall-queries", "10", "--filtered", "5", "--edits", "2",
           "--store-edits", "3"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "IMAGESEARCH_MILVUS_PREFIX": prefix})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["store"], result["products"], result["index_type"], result["engine_index_type"]) == \
        ("milvus", 300, "flat", "FLAT")
    assert result["recall_at_10"] == 1.0 and result["milvus_uri"] == milvus_standalone
    for key in ("milvus_peak_rss_build_mb", "milvus_rss_serving_mb", "api_rss_mb", "store_upsert_p50_ms",
                "store_delete_p50_ms", "upsert_commit_p50_ms", "delete_p50_ms", "filtered_p50_ms", "search_p99_ms"):
        assert result[key] > 0, key
    client = MilvusClient(uri=milvus_standalone)
    try:
        assert not [n for n in client.list_collections() if n.startswith(prefix)]
    finally:
        client.close()
