"""run_training.py's quality options, driven through its main() like a user would."""

from __future__ import annotations

import logging

import pytest

import run_training

from .conftest import buried_signal_catalogue, store_model


@pytest.fixture
def cli_env(monkeypatch, make_settings):
    settings = make_settings(finetune_lr=1e-2, finetune_batch_categories=6, finetune_batch_per_category=6)
    for key, value in (("ROOT", settings.root), ("CLIP_MODEL", settings.clip_model), ("DEVICE", "cpu"),
                       ("TORCH_THREADS", 1), ("FINETUNE_LR", 0.01), ("FINETUNE_BATCH_CATEGORIES", 6),
                       ("FINETUNE_BATCH_PER_CATEGORY", 6)):
        monkeypatch.setenv(f"IMAGESEARCH_{key}", str(value))
    (settings.data_dir / "noisy").mkdir(parents=True)
    (settings.data_dir / "noisy" / "products.csv").write_text("shopify_product_id,title,images\n")
    yield settings
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_imagesearch", False)]:
        root.removeHandler(handler)
        handler.close()


def test_bench_index_on_a_synthetic_size(cli_env, capsys):
    assert run_training.main(["noisy", "--bench-index", "--size", "500", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "recall@10" in out and "recommended: flat" in out


def test_finetune_prints_both_figures_and_logs(cli_env, capsys):
    x, y = buried_signal_catalogue()
    store_model(cli_env, "noisy", x, [f"c{c}" for c in y])
    assert run_training.main(["noisy", "--finetune", "--margin", "0.3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "zero-shot" in out and "fine-tuned" in out and "margin 0.3" in out
    assert "fine-tuning" in (cli_env.logs_dir / "training.log").read_text()


def test_unbuilt_model_and_bad_combinations_exit_1_with_a_message(cli_env, capsys):
    assert run_training.main(["noisy", "--evaluate", "--no-progress"]) == 1
    assert "build the model first" in capsys.readouterr().err
    assert run_training.main(["noisy", "--evaluate", "--size", "10"]) == 1
    assert "--size only applies to --bench-index" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_training.main(["noisy", "--bench-index", "--size", "0"])
