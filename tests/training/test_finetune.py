"""Fine-tuning: loss, batches, split, the trainer's measurable gain and the adoption rule."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import NotEnoughDataError, TrainingError
from core.head import load_head
from training import finetune
from training.finetune import finetune_embeddings, run_finetune, should_adopt, stratified_split
from training.report import format_finetune
from training.trainer import TrainConfig, batch_hard_triplet_loss, build_head, pk_batches

from .conftest import buried_signal_catalogue, read_json, write_model_files

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
    spec = write_model_files(settings, "clean", x, [f"c{c}" for c in y])
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
    spec = write_model_files(settings, "noisy", x, [f"c{c}" for c in y])
    paths = spec.paths(settings)
    seen = []
    monkeypatch.setattr(finetune, "_rebuild_index", lambda s, sp, progress: seen.append(load_head(paths.head)))
    result = run_finetune(settings, spec, progress=False)
    assert result["adopted"] and result["tuned_map_at_10"] > result["baseline_map_at_10"]
    assert len(seen) == 1 and seen[0] is not None  # the head was in place when the index was rebuilt
    assert (paths.checkpoints / finetune.CHECKPOINT_FILE).is_file()
    assert read_json(paths.checkpoints / "finetune.json")["best_epoch"] == result["best_epoch"]
    assert "ADOPTED" in format_finetune(result)


def test_failed_rebuild_restores_the_previous_head(make_settings, monkeypatch):
    settings = make_settings(**FAST_SETTINGS)
    x, y = buried_signal_catalogue()
    spec = write_model_files(settings, "noisy", x, [f"c{c}" for c in y])

    def fail(*_args):
        raise RuntimeError("index phase exploded")

    monkeypatch.setattr(finetune, "_rebuild_index", fail)
    with pytest.raises(TrainingError, match="head not adopted"):
        run_finetune(settings, spec, progress=False)
    assert not spec.paths(settings).head.exists()


def test_single_category_and_tiny_categories_get_clear_messages(make_settings):
    settings = make_settings()
    x, _ = buried_signal_catalogue(n_cat=2, per=6)
    one = write_model_files(settings, "one", x, ["shirt"] * len(x))
    with pytest.raises(NotEnoughDataError, match="single category"):
        run_finetune(settings, one, progress=False)
    tiny = write_model_files(settings, "tiny", x, [f"c{i // 3}" for i in range(len(x))])
    with pytest.raises(NotEnoughDataError, match="at least 5 products"):
        run_finetune(settings, tiny, progress=False)


def test_adoption_through_the_real_index_phase(make_settings):
    from core.vector_index import load_index_bundle
    from pipeline.base import PipelineContext
    from pipeline.indexing import IndexPhase
    from pipeline.runner import run_phases

    settings = make_settings(**FAST_SETTINGS)
    x, y = buried_signal_catalogue()
    spec = write_model_files(settings, "noisy", x, [f"c{c}" for c in y])
    run_phases(PipelineContext(settings=settings, spec=spec, progress=False), [IndexPhase()])
    paths = spec.paths(settings)
    assert load_index_bundle(paths, spec.name).manifest["head"] is None

    result = run_finetune(settings, spec, progress=False)

    head = load_head(paths.head)
    assert result["adopted"] and head is not None
    bundle = load_index_bundle(paths, spec.name)
    assert bundle.manifest["head"] == head.sha256
    assert np.allclose(np.load(paths.embeddings), head.apply(x), atol=1e-6)
    # a query through the head finds its own product first in the rebuilt index
    _, pos = bundle.search(head.apply(x[:3]), 1)
    assert pos[:, 0].tolist() == [0, 1, 2]
