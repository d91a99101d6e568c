"""Index benchmark on small real FAISS indexes."""

from __future__ import annotations

import numpy as np
import pytest

from core.ann import choose_index_type
from core.errors import ConfigError, MissingInputError
from core.model_config import ModelSpec
from training.index_bench import recommendation, run_index_bench, synthetic_vectors
from training.report import format_bench

from .conftest import store_model


def test_synthetic_set_benchmarks_all_types_and_recommends_the_auto_choice(make_settings):
    settings = make_settings(flat_max_products=1000, hnsw_max_products=5000)
    # a built model of 64-d vectors: the synthetic set takes its width (64-d keeps PQ training quick)
    spec = store_model(settings, "demo", synthetic_vectors(20, 64, seed=1), ["a"] * 20)
    result = run_index_bench(settings, spec, size=3000, progress=False, queries=50)
    assert result["source"] == "synthetic" and result["num_vectors"] == 3000 and result["dim"] == 64
    assert set(result["results"]) == {"flat", "hnsw", "ivf", "ivfsq", "ivfpq"}
    assert result["results"]["flat"]["recall_at_10"] == 1.0
    for row in result["results"].values():
        assert 0 < row["recall_at_10"] <= 1 and row["latency_ms_median"] > 0 and row["memory_bytes"] > 0
    results = result["results"]
    # tuned to the recall target on catalogue queries, held-out noisy queries come close to it
    assert results["hnsw"]["recall_at_10"] > 0.85 and results["ivf"]["recall_at_10"] > 0.85
    assert results["ivfsq"]["recall_at_10"] > 0.85  # 8-bit codes rank well; the shortlist is re-scored exactly
    assert results["ivfpq"]["recall_at_10"] > 0.7  # PQ candidates re-ranked exactly
    assert "ef_search" in results["hnsw"]["params"] and "nprobe" in results["ivf"]["params"]
    assert "nprobe" in results["ivfsq"]["params"]
    # a byte per dimension instead of four; PQ's codes are smaller still
    assert results["ivfpq"]["memory_bytes"] < results["ivfsq"]["memory_bytes"] < results["flat"]["memory_bytes"] / 2
    assert result["recommended"] == choose_index_type(3000, settings).value == "hnsw"
    assert result["recommended_params"] == results["hnsw"]["params"]
    text = format_bench(result)
    assert "recommended: hnsw" in text and f"ef_search={results['hnsw']['params']['ef_search']}" in text


def test_pq_is_skipped_with_a_reason_below_its_training_minimum(make_settings):
    result = run_index_bench(make_settings(), ModelSpec(name="demo"), size=100, progress=False, queries=10)
    assert result["dim"] == 512  # no model built: CLIP ViT-B/32's width
    assert "at least 512 vectors" in result["results"]["ivfpq"]["skipped"]
    assert result["results"]["flat"]["recall_at_10"] == 1.0 and result["recommended"] == "flat"
    assert "ivfpq: skipped" in format_bench(result)


def test_synthetic_vectors_are_clustered_not_uniform_noise():
    vecs = synthetic_vectors(2000, 64, seed=3)
    sims = vecs[:200] @ vecs.T
    np.fill_diagonal(sims[:, :200], -1)
    # every vector has close neighbours (its cluster), far closer than random unit vectors in 64-d (~0.13)
    assert np.median(sims.max(axis=1)) > 0.4


@pytest.mark.parametrize("size,kind", [(1, "flat"), (1000, "flat"), (1001, "hnsw"), (5000, "hnsw"), (5001, "ivf"),
                                       (7000, "ivf"), (7001, "ivfsq"), (9000, "ivfsq"), (9001, "ivfpq")])
def test_recommendation_follows_the_auto_rule_at_its_edges(make_settings, size, kind):
    settings = make_settings(flat_max_products=1000, hnsw_max_products=5000, ivfsq_min_products=7000,
                             ivfpq_min_products=9000)
    assert recommendation(size, settings)[0] == choose_index_type(size, settings) == kind


def test_model_vectors_are_read_from_the_store_without_size(make_settings):
    settings = make_settings()
    vecs = synthetic_vectors(300, 16, seed=1)
    spec = store_model(settings, "small", vecs, ["a"] * 300)
    result = run_index_bench(settings, spec, progress=False, queries=20)
    assert result["source"] == "model" and result["num_vectors"] == 300 and result["dim"] == 16
    assert result["recommended"] == "flat" and result["results"]["flat"]["recall_at_10"] == 1.0
    # size given: synthetic vectors at the model's width
    assert run_index_bench(settings, spec, size=100, progress=False, queries=5)["dim"] == 16


def test_synthetic_vectors_are_unit_length():
    vecs = synthetic_vectors(100, 8)
    assert vecs.dtype == np.float32 and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)


def test_missing_vectors_and_bad_size_are_typed_errors(make_settings):
    settings = make_settings()
    with pytest.raises(MissingInputError, match="--size"):
        run_index_bench(settings, ModelSpec(name="none"), progress=False)
    assert not (settings.models_dir / "none").exists()  # asking does not create an empty store
    with pytest.raises(ConfigError):
        run_index_bench(make_settings(), ModelSpec(name="none"), size=0, progress=False)
