"""Fine-tuning: loss, batches, split, the trainer's measurable gain and the adoption rule."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import NotEnoughDataError, TrainingError
from core.head import load_head, save_head
from training import finetune
from training.finetune import finetune_embeddings, run_finetune, should_adopt, stratified_split
from training.report import format_finetune
from training.trainer import TrainConfig, batch_hard_triplet_loss, build_head, pk_batches

from .conftest import buried_signal_catalogue, read_json, store_model

FAST = TrainConfig(lr=1e-2, categories_per_batch=6, per_category=6, epochs=60, patience=6, seed=0)
FAST_SETTINGS = dict(finetune_lr=1e-2, finetune_batch_categories=6, finetune_batch_per_category=6)


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_batch_hard_triplet_loss_by_hand():
    import torch

    pts = np.array([[1, 0], [0.6, 0.8], [0, 1], [-1, 0]], dtype=np.float32)
    d = np.linalg.norm(pts[:, None] - pts[None], axis=2)
    # anchor: hardest positive - hardest negative + margin, clipped at 0
    expected = np.mean([max(0, d[0, 1] - d[0, 2] + 0.2), max(0, d[1, 0] - d[1, 2] + 0.2),
                        max(0, d[2, 3] - d[2, 1] + 0.2), max(0, d[3, 2] - d[3, 1] + 0.2)])
    loss = batch_hard_triplet_loss(torch.from_numpy(pts), torch.tensor([0, 0, 1, 1]), margin=0.2)
    assert float(loss) == pytest.approx(expected, abs=1e-5)
    assert float(loss) == pytest.approx((0.894427 - 0.632456 + 0.2 + 1.414214 - 0.632456 + 0.2) / 4, abs=1e-5)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_heads_start_as_the_identity(kind):
    import torch

    x = torch.randn(5, 8)
    assert torch.allclose(build_head(kind, 8)(x), x, atol=1e-6)


def test_pk_batches_are_balanced():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 1)
    batches = pk_batches(labels, p=4, k=4, rng=np.random.default_rng(0), count=5)
    for batch in batches:
        assert sorted(np.bincount(labels[batch], minlength=3).tolist()) == [0, 4, 4]  # the lone item can't join


def test_stratified_split_covers_each_category_once():
    labels = np.repeat([0, 1, 2], [5, 20, 9])
    split = stratified_split(labels, np.array([0, 1]), seed=0)
    rows = np.concatenate([split.train, split.val, split.test])
    assert len(rows) == len(set(rows.tolist())) == 25  # category 2 not listed: in no part
    for part, least in ((split.train, 2), (split.val, 2), (split.test, 1)):
        assert all((labels[part] == c).sum() >= least for c in (0, 1))


def test_finetuning_raises_map_where_signal_is_buried_in_noise():
    x, y = buried_signal_catalogue()
    out = finetune_embeddings(x, y, [str(c) for c in range(6)], FAST)
    base, tuned = out["baseline"]["map_at_10"], out["tuned"]["map_at_10"]
    assert base < 0.4
    assert tuned > base + 0.3, (base, tuned)
    assert out["adopt"] and out["fit"].best_epoch > 0


def test_mlp_head_also_learns():
    x, y = buried_signal_catalogue(seed=1)
    out = finetune_embeddings(x, y, [str(c) for c in range(6)], TrainConfig(**{**FAST.__dict__, "head": "mlp",
                                                                              "lr": 3e-3}))
    assert out["tuned"]["map_at_10"] > out["baseline"]["map_at_10"] + 0.2


def test_adoption_rule_is_strict():
    assert should_adopt(0.5, 0.51) and not should_adopt(0.5, 0.5) and not should_adopt(0.5, 0.4)
    assert not should_adopt(None, 0.9)


def test_head_that_cannot_beat_zero_shot_is_rejected(make_settings):
    settings = make_settings(**FAST_SETTINGS)
    # one orthogonal direction per category, little jitter: zero-shot is already perfect
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 20)
    x = np.eye(32, dtype=np.float32)[y] + rng.normal(0, 0.01, (len(y), 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    spec = store_model(settings, "clean", x, [f"c{c}" for c in y])
    result = run_finetune(settings, spec, progress=False)
    paths = spec.paths(settings)
    assert result["baseline_map_at_10"] == pytest.approx(1.0)
    assert not result["adopted"] and not paths.head.exists()
    assert (paths.models / finetune.CANDIDATE_FILE).is_file()
    saved = read_json(paths.models / "evaluation.json")["finetune"]
    assert saved["baseline_map_at_10"] == result["baseline_map_at_10"] and "tuned_map_at_10" in saved
    assert "not adopted" in format_finetune(result)


def test_helpful_head_is_adopted_then_the_index_rebuilt(make_settings, monkeypatch):
    settings = make_settings(**FAST_SETTINGS)
    x, y = buried_signal_catalogue()
    spec = store_model(settings, "noisy", x, [f"c{c}" for c in y])
    paths = spec.paths(settings)
    seen = []
    monkeypatch.setattr(finetune, "_rebuild_index", lambda s, sp, progress: seen.append(load_head(paths.head)))
    result = run_finetune(settings, spec, progress=False)
    assert result["adopted"] and result["tuned_map_at_10"] > result["baseline_map_at_10"]
    assert len(seen) == 1 and seen[0] is not None  # the head was in place when the index was rebuilt
    assert (paths.checkpoints / finetune.CHECKPOINT_FILE).is_file()
    assert read_json(paths.checkpoints / "finetune.json")["best_epoch"] == result["best_epoch"]
    assert "ADOPTED" in format_finetune(result)


@pytest.mark.parametrize("had_head", [False, True])
def test_failed_rebuild_restores_the_previous_head_and_projection(make_settings, monkeypatch, had_head):
    from core.catalogue_store import open_store
    from pipeline.indexing import IndexPhase

    settings = make_settings(**FAST_SETTINGS)
    x, y = buried_signal_catalogue()
    spec = store_model(settings, "noisy", x, [f"c{c}" for c in y])
    paths = spec.paths(settings)
    if had_head:  # a previously adopted head: doubles every vector, i.e. the identity after normalising
        save_head(paths.head, [2 * np.eye(x.shape[1], dtype=np.float32)], [np.zeros(x.shape[1], np.float32)])
    before = paths.head.read_bytes() if had_head else None
    open_store(settings, spec).close()  # the store follows the file: projected through it, indexed

    def explode(self, ctx):  # fails after the store was re-projected through the new head
        assert ctx.store().head is not None and ctx.store().head.sha256 != load_head_sha(before)
        raise RuntimeError("index phase exploded")

    monkeypatch.setattr(IndexPhase, "run", explode)
    with pytest.raises(TrainingError, match="head not adopted"):
        run_finetune(settings, spec, progress=False)
    assert (paths.head.read_bytes() if paths.head.exists() else None) == before
    store = open_store(settings, spec)
    try:
        assert store.table.head() == load_head_sha(before)
        assert np.allclose(store.vectors(["p0", "p1"]), x[:2], atol=1e-3)  # stored as float16
        assert [hits[0].product.id for hits in store.search(x[:3], 1)] == ["p0", "p1", "p2"]
        assert store.require_index().ntotal == len(x)  # no duplicate from a stale saved index
    finally:
        store.close()


def load_head_sha(data: bytes | None) -> str | None:
    import hashlib

    return None if data is None else hashlib.sha256(data).hexdigest()


def test_single_category_and_tiny_categories_get_clear_messages(make_settings):
    settings = make_settings()
    x, _ = buried_signal_catalogue(n_cat=2, per=6)
    one = store_model(settings, "one", x, ["shirt"] * len(x))
    with pytest.raises(NotEnoughDataError, match="single category"):
        run_finetune(settings, one, progress=False)
    tiny = store_model(settings, "tiny", x, [f"c{i // 3}" for i in range(len(x))])
    with pytest.raises(NotEnoughDataError, match="at least 5 products"):
        run_finetune(settings, tiny, progress=False)


def test_adoption_through_the_real_index_phase_keeps_api_products(make_settings):
    from core.catalogue_store import open_store
    from core.store import Product, ProductVector, Source
    from pipeline.base import PipelineContext
    from pipeline.indexing import IndexPhase
    from pipeline.runner import run_phases

    settings = make_settings(**FAST_SETTINGS)
    x, y = buried_signal_catalogue()
    spec = store_model(settings, "noisy", x, [f"c{c}" for c in y])
    ctx = PipelineContext(settings=settings, spec=spec, progress=False)
    run_phases(ctx, [IndexPhase()])
    ctx.close()
    paths = spec.paths(settings)
    assert read_json(paths.models / "index.json")["head"] is None
    # a product added through the API after the build: written to the store, not to any CSV
    added = buried_signal_catalogue(seed=5)[0][0]
    store = open_store(settings, spec)
    store.upsert([ProductVector(Product(id="api-1", title="added by an admin", category="c2", source=Source.API),
                                clip=added)])
    store.close()

    result = run_finetune(settings, spec, progress=False)

    head = load_head(paths.head)
    assert result["adopted"] and head is not None
    info = read_json(paths.models / "index.json")
    assert info["head"] == head.sha256 and info["count"] == len(x) + 1
    store = open_store(settings, spec)
    try:
        assert store.table.head() == head.sha256
        # both vectors stored as float16
        assert np.allclose(store.vectors(["p0", "p1", "api-1"]), head.apply(np.vstack([x[:2], added])), atol=1e-3)
        assert np.allclose(store.vectors(["api-1"], clip=True), added[None], atol=1e-3)  # the raw vector is kept
        # a query through the head finds its own product first in the rebuilt index, the API one too
        queries = head.apply(np.vstack([x[:3], added]))
        assert [hits[0].product.id for hits in store.search(queries, 1)] == ["p0", "p1", "p2", "api-1"]
        assert store.get(["api-1"])[0].source == Source.API
    finally:
        store.close()
