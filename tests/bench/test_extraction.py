"""Smoke test of bench/extraction.py: every path measured with the tiny CLIP on a few JPEGs, one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KEYS = ("device", "model", "images", "ceiling_images_per_s", "ours_images_per_s", "utilisation",
        "download_images_per_s", "reference_images_per_s", "naive_images_per_s", "ratio", "min_cosine",
        "preprocess_scaling", "download_scaling", "end_to_end_images_per_s", "end_to_end_vs_reference",
        "host_ms_per_image", "host_ceiling_images_per_s")


@pytest.mark.slow
def test_extraction_bench_measures_every_path_and_ends_with_its_figures(tmp_path):
    cmd = [sys.executable, str(REPO / "bench" / "extraction.py"), "--models", "tiny", "--images", "12",
           "--repeats", "1", "--naive-images", "4", "--scaling-images", "12"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "| ours: extraction phase from the cache |" in done.stdout
    assert "host ms per image in the build process" in done.stdout  # what caps one build process on a GPU
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(key in result for key in KEYS), sorted(set(KEYS) - set(result))
    assert (result["device"], result["model"], result["images"]) == ("cpu", "tiny CLIP", 12)
    assert all(result[key] > 0 for key in KEYS[3:])
    assert len(result["utilisation_rounds"]) == 1  # each round's ratio, for judging a shared machine's noise
    assert result["min_cosine"] >= 0.995  # our preprocessing and bf16 against CLIPProcessor + fp32
