"""FAISS index types, cosine scores for both metrics, and the atomic, self-checking bundle."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import IndexNotReadyError
from core.model_config import ModelSpec
from core.types import IndexType, Metric
from core.vector_index import build_index, choose_index_type, load_index_bundle, search_index, write_index_bundle


def _unit(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", [IndexType.FLAT, IndexType.IVF, IndexType.HNSW])
@pytest.mark.parametrize("metric", [Metric.COSINE, Metric.EUCLIDEAN])
def test_every_type_finds_the_query_itself_with_cosine_scores(make_settings, kind, metric):
    vectors = _unit(3000)
    index = build_index(vectors, kind, metric, make_settings())
    scores, pos = search_index(index, metric, vectors[:20], 5)
    assert (pos[:, 0] == np.arange(20)).mean() >= 0.95
    expected = np.sum(vectors[pos[:, 1]] * vectors[:20], axis=1)  # cosine of the runner-up
    assert np.allclose(scores[:, 1], expected, atol=1e-4) and np.all(scores <= 1.0)


def test_auto_picks_by_catalogue_size(make_settings):
    settings = make_settings(flat_max_products=100, hnsw_max_products=1000)
    assert [choose_index_type(n, settings) for n in (10, 100, 101, 1000, 1001)] == [
        IndexType.FLAT, IndexType.FLAT, IndexType.HNSW, IndexType.HNSW, IndexType.IVF]


def test_bundle_roundtrip_and_corruption_is_reported(make_settings):
    settings = make_settings()
    paths = ModelSpec(name="m").paths(settings)
    vectors = _unit(50)
    metadata = [{"id": str(i), "title": f"p{i}"} for i in range(50)]
    manifest = write_index_bundle(paths, build_index(vectors, IndexType.FLAT, Metric.COSINE, settings), metadata,
                                  {"backbone": "tiny", "metric": "cosine"})
    assert manifest["num_products"] == 50 and manifest["dim"] == 32 and manifest["index_type"] == "flat"
    bundle = load_index_bundle(paths, "m")
    scores, pos = bundle.search(vectors[7:8], 3)
    assert bundle.metadata[pos[0, 0]]["id"] == "7" and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    paths.index.write_bytes(b"garbage")
    with pytest.raises(IndexNotReadyError, match="does not match manifest"):
        load_index_bundle(paths, "m", retries=0)


def test_missing_index_says_how_to_build_it(make_settings):
    paths = ModelSpec(name="m").paths(make_settings())
    with pytest.raises(IndexNotReadyError, match="run_training.py m"):
        load_index_bundle(paths, "m")
