"""Calibrated match, the cross-model merge and near-duplicates, on stores built directly (real LocalStore
with FAISS, or a real MilvusStore on the session's Milvus server; the API's own search functions) with
synthetic vectors whose relevance is known."""

from __future__ import annotations

import numpy as np
import pytest

from api.loaded import ServedModel
from api.ranking import Filters, merge_rankings, nearest, to_hits
from core.calibration import TEXT, fit_logistic, load_calibration
from core.head import ProjectionHead
from core.local_store import LocalStore
from core.model_config import ModelSpec
from core.store import ModelStore, Product, ProductVector
from tests.stores import both_stores, need_pymilvus

DIM, CLUSTERS, PER_CLUSTER = 16, 8, 12


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _squeezing_head(scale: float = 0.1) -> ProjectionHead:
    """y = [scale * x, 1], normalised: every cosine is squeezed into about [0.98, 1]."""
    w = np.concatenate([scale * np.eye(DIM), np.zeros((1, DIM))]).astype(np.float32)
    b = np.zeros(DIM + 1, dtype=np.float32)
    b[-1] = 1.0
    return ProjectionHead(weights=(w,), biases=(b,), sha256="squeeze")


def _catalogue(seed: int, centres: np.ndarray, prefix: str) -> tuple[list[Product], np.ndarray]:
    rng = np.random.default_rng(seed)
    products, vectors = [], []
    for c, centre in enumerate(centres):
        for i in range(PER_CLUSTER):
            products.append(Product(id=f"{prefix}{c}-{i}", title=f"{prefix} item {c}-{i}", category=f"cat{c}"))
            vectors.append(centre + 0.12 * rng.normal(size=DIM))
    return products, _unit(np.array(vectors))


def _open(milvus: dict[str, str] | None, tmp_path, make_settings, name: str,
          head: ProjectionHead | None = None) -> ModelStore:
    """An empty store: local, or in Milvus with these settings overrides (``milvus`` fixture)."""
    if milvus is None:
        settings = make_settings(root=tmp_path / name, duplicate_threshold=0.94)
        return LocalStore(tmp_path / name / "models", settings, name=name, head=head, open_index=False)
    need_pymilvus()
    from core.milvus_store import MilvusStore

    settings = make_settings(root=tmp_path / name, duplicate_threshold=0.94, **milvus)
    return MilvusStore(tmp_path / name / "models", settings, name=name, head=head, open_index=False)


@pytest.fixture
def milvus(store, store_overrides, tmp_path) -> dict[str, str] | None:
    """None for the local store; the milvus-lite stores of a test share one embedded file (one process), the
    real Milvus ones the session's server under the test's own prefix."""
    if store == "milvus":
        return {"store": "milvus", "milvus_uri": str(tmp_path / "milvus.db")}
    return store_overrides or None


def _served(tmp_path, make_settings, name: str, seed: int, centres: np.ndarray,
            head: ProjectionHead | None = None, text=None, milvus: dict[str, str] | None = None) -> ServedModel:
    store = _open(milvus, tmp_path, make_settings, name, head)
    store.text_encoder = text
    products, clips = _catalogue(seed, centres, name)
    indexed = head.apply(clips) if head is not None else [None] * len(clips)
    store.upsert([ProductVector(p, c, v) for p, c, v in zip(products, clips, indexed, strict=True)])
    store.open_index()
    store.ensure_calibration()  # as the pipeline's index phase does (the local store has fitted it already)
    return ServedModel(spec=ModelSpec(name=name), backbone="synthetic", store=store)


@pytest.fixture
def centres() -> np.ndarray:
    return _unit(np.random.default_rng(0).normal(size=(CLUSTERS, DIM)) * 3)


def _merged(models: list[ServedModel], query: np.ndarray, method: str, k: int) -> list[tuple[str, str]]:
    per_model = []
    for model in models:
        vector = model.head.apply(query[None]) if model.head is not None else query[None]
        per_model.append(to_hits(model, nearest(model, vector[0], Filters(top_k=k, dedupe=False)), ""))
    return [(h.model or "", h.category or "") for h in merge_rankings(per_model, k, method)]  # type: ignore[arg-type]


@both_stores
def test_match_interleaves_models_whose_cosines_differ_in_scale(tmp_path, make_settings, centres, milvus):
    plain = _served(tmp_path, make_settings, "plain", 1, centres, milvus=milvus)
    squeezed = _served(tmp_path, make_settings, "squeezed", 2, centres, head=_squeezing_head(), milvus=milvus)
    query = centres[0]  # relevant: category cat0 in both models
    k = 2 * PER_CLUSTER
    by_match = _merged([plain, squeezed], query, "match", k)
    by_score = _merged([plain, squeezed], query, "score", k)
    # calibrated: every relevant product of both models comes before any irrelevant one
    assert all(cat == "cat0" for _, cat in by_match)
    assert {m for m, _ in by_match[:PER_CLUSTER]} == {"plain", "squeezed"}  # interleaved, not one model first
    # raw cosine: the squeezed model's irrelevant products (cosine ~0.99) bury the plain model's relevant ones
    assert sum(cat != "cat0" for _, cat in by_score) >= PER_CLUSTER - 2
    assert [m for m, _ in by_score].count("plain") <= 2
    cal = load_calibration(tmp_path / "squeezed" / "models")  # Milvus leaves the file on the build machine too
    assert cal is not None and cal.head == "squeeze" and cal.method == "category" and cal.image.midpoint > 0.98


def test_rrf_and_score_orders_are_selectable(tmp_path, make_settings, centres):
    plain = _served(tmp_path, make_settings, "plain", 1, centres)
    squeezed = _served(tmp_path, make_settings, "squeezed", 2, centres, head=_squeezing_head())
    rrf = _merged([plain, squeezed], centres[0], "rrf", 6)
    assert [m for m, _ in rrf[:2]] in (["plain", "squeezed"], ["squeezed", "plain"])  # rank 1 of each first


@both_stores
def test_text_map_is_fitted_with_titles_through_the_head(tmp_path, make_settings, centres, milvus):
    def encode(titles):  # a title names its cluster: its "text vector" is the cluster centre, a bit off
        rng = np.random.default_rng(len(titles))
        return _unit(np.array([centres[int(t.split()[-1].split("-")[0])] for t in titles])
                     + 0.5 * rng.normal(size=(len(titles), DIM)))

    model = _served(tmp_path, make_settings, "texty", 3, centres, text=encode, milvus=milvus)
    cal = model.require().calibration
    assert cal is not None and cal.text is not None and cal.text.informative
    hits = nearest(model, centres[0], Filters(top_k=5, kind=TEXT, dedupe=False))
    assert all(h.match is not None and 0 <= h.match <= 1 for h in hits)
    assert cal.text(0.2) != cal.image(0.2)


@both_stores
def test_calibration_is_refitted_when_the_index_is_rebuilt(tmp_path, make_settings, centres, milvus):
    model = _served(tmp_path, make_settings, "refit", 4, centres, milvus=milvus)
    opened = model.require()
    first, live = opened.calibration, opened.open_index()
    assert first is not None and live is not None and first.index_built_at == live.info.built_at
    fresh = opened.rebuild(save=True)
    opened.install_index(fresh)
    assert opened.calibration is not None and opened.calibration.index_built_at == fresh.info.built_at


@both_stores
def test_near_duplicates_collapse_into_one_hit(tmp_path, make_settings, centres, milvus):
    opened = _open(milvus, tmp_path, make_settings, "dups")
    products, clips = _catalogue(5, centres, "d")
    copies = _unit(clips[:3] + 0.01)  # the same photo under other ids
    extra = [Product(id=f"copy{i}", title="copy", category=p.category) for i, p in enumerate(products[:3])]
    opened.upsert([ProductVector(p, c) for p, c in zip(products + extra, np.concatenate([clips, copies]),
                                                        strict=True)])
    opened.open_index()
    model = ServedModel(spec=ModelSpec(name="dups"), backbone="synthetic", store=opened)
    collapsed = nearest(model, clips[0], Filters(top_k=5))
    assert collapsed[0].product.id == products[0].id and "copy0" in collapsed[0].duplicates
    assert all(f.product.id != "copy0" for f in collapsed) and len(collapsed) == 5
    raw = nearest(model, clips[0], Filters(top_k=5, dedupe=False))
    assert {"copy0", products[0].id} <= {f.product.id for f in raw}


def test_logistic_fit_is_monotone_and_balanced():
    rng = np.random.default_rng(0)
    fitted = fit_logistic(rng.normal(0.7, 0.05, 500), rng.normal(0.3, 0.05, 5000))
    assert fitted.a > 0 and 0.45 < fitted.midpoint < 0.55 and fitted.informative
    assert fitted(0.9) > 0.95 and fitted(0.1) < 0.05
    flat = fit_logistic(rng.normal(0.3, 0.05, 500), rng.normal(0.7, 0.05, 500))
    assert not flat.informative and flat.a > 0
