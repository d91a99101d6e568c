"""Index benchmark on small real FAISS indexes."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import ConfigError, MissingInputError
from core.model_config import ModelSpec
from core.vector_index import choose_index_type
from training.index_bench import recommendation, run_index_bench, synthetic_vectors
from training.report import format_bench

from .conftest import write_model_files


def test_synthetic_set_benchmarks_all_types_and_recommends_the_auto_choice(make_settings):
    settings = make_settings(flat_max_products=1000, hnsw_max_products=5000)
    result = run_index_bench(settings, ModelSpec(name="demo"), size=2000, progress=False, queries=50)
    assert result["source"] == "synthetic" and result["num_vectors"] == 2000 and result["dim"] == 512
    assert set(result["results"]) == {"flat", "ivf", "hnsw"}
    assert result["results"]["flat"]["recall_at_10"] == 1.0
    for row in result["results"].values():
        assert 0 < row["recall_at_10"] <= 1 and row["latency_ms_median"] > 0 and row["memory_bytes"] > 0
    assert result["results"]["hnsw"]["recall_at_10"] > 0.8
    assert result["recommended"] == choose_index_type(2000, settings).value == "hnsw"
    assert "recommended: hnsw" in format_bench(result)


@pytest.mark.parametrize("size", [1, 1000, 1001, 5000, 5001])
def test_recommendation_follows_the_auto_rule_at_its_edges(make_settings, size):
    settings = make_settings(flat_max_products=1000, hnsw_max_products=5000)
    assert recommendation(size, settings)[0] == choose_index_type(size, settings)


def test_model_vectors_are_used_without_size(make_settings):
    settings = make_settings()
    vecs = synthetic_vectors(300, 16, seed=1)
    spec = write_model_files(settings, "small", vecs, ["a"] * 300)
    result = run_index_bench(settings, spec, progress=False, queries=20)
    assert result["source"] == "model" and result["num_vectors"] == 300 and result["dim"] == 16
    assert result["recommended"] == "flat"
    # size given: synthetic vectors at the model's width
    assert run_index_bench(settings, spec, size=100, progress=False, queries=5)["dim"] == 16


def test_synthetic_vectors_are_unit_length():
    vecs = synthetic_vectors(100, 8)
    assert vecs.dtype == np.float32 and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)


def test_missing_vectors_and_bad_size_are_typed_errors(make_settings):
    with pytest.raises(MissingInputError, match="--size"):
        run_index_bench(make_settings(), ModelSpec(name="none"), progress=False)
    with pytest.raises(ConfigError):
        run_index_bench(make_settings(), ModelSpec(name="none"), size=0, progress=False)
