"""Evaluation end to end on a hand-built model folder with real images and the tiny CLIP."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import MissingInputError, NotEnoughDataError
from core.head import save_head
from core.model_config import ModelSpec
from training.evaluate import PERTURBATIONS, run_evaluation
from training.report import format_evaluation, update_results

from .conftest import read_json, store_model


def test_evaluation_writes_metrics_robustness_and_chart(image_model, tiny_encoder):
    settings, spec = image_model({"red": 4, "green": 4, "blue": 3, "yellow": 1})
    paths = spec.paths(settings)
    update_results(paths.models / "evaluation.json", {"finetune": {"adopted": False}})  # must survive

    result = run_evaluation(settings, spec, progress=False, encoder=tiny_encoder)

    saved = read_json(paths.models / "evaluation.json")
    for key in ("precision_at_1", "precision_at_5", "precision_at_10", "mrr", "map_at_10", "per_category",
                "robustness"):
        assert key in saved
    assert saved["finetune"] == {"adopted": False}
    assert result["queries"] == 11 and result["unscorable"] == 1  # the lone yellow product
    assert result["categories_with_one_product"] == ["yellow"]
    assert result["per_category"]["yellow"]["precision_at_5"] is None
    # solid colours separate cleanly even under a random tiny CLIP
    assert result["precision_at_1"] > 0.8
    robust = result["robustness"]
    assert robust["original"] == 1.0  # a preview finds its own product (its vector is that image's)
    assert set(PERTURBATIONS) <= set(robust) and all(0 <= robust[p] <= 1 for p in PERTURBATIONS)
    assert (paths.models / "evaluation_precision_at_5.png").read_bytes()[:4] == b"\x89PNG"
    text = format_evaluation(result)
    assert "precision_at_5" in text and "jpeg_quality_10" in text and "yellow" in text


def test_queries_go_through_the_adopted_head(image_model, tiny_encoder):
    settings, spec = image_model({"red": 3, "blue": 3})
    paths = spec.paths(settings)
    dim = tiny_encoder.dim
    # a head that flips every vector: the store re-projects through it when opened, and queries
    # must be flipped too, or nothing finds itself
    save_head(paths.head, [-np.eye(dim, dtype=np.float32)], [np.zeros(dim, np.float32)])
    result = run_evaluation(settings, spec, progress=False, encoder=tiny_encoder)
    assert result["head"] is not None
    assert result["robustness"]["original"] == 1.0


def test_single_category_gives_a_note_not_a_crash(image_model, tiny_encoder):
    settings, spec = image_model({"red": 5})
    result = run_evaluation(settings, spec, progress=False, encoder=tiny_encoder)
    assert result["precision_at_5"] is None
    assert "single category" in result["notes"][0]
    assert result["robustness"]["original"] == 1.0
    assert "note: category metrics skipped" in format_evaluation(result)


def test_unbuilt_model_raises_a_typed_error(make_settings):
    with pytest.raises(MissingInputError, match="build the model first"):
        run_evaluation(make_settings(), ModelSpec(name="nothing"), progress=False)


def test_no_preview_images_is_a_clear_error(make_settings):
    settings = make_settings()
    spec = store_model(settings, "bare", np.eye(4, dtype=np.float32), ["a", "a", "b", "b"])
    with pytest.raises(NotEnoughDataError, match="no product has a cached preview"):
        run_evaluation(settings, spec, progress=False)


def test_backbone_width_mismatch_is_a_typed_error(make_settings, tiny_encoder):
    from core.errors import IndexNotReadyError

    settings = make_settings()
    spec = store_model(settings, "wide", np.eye(4, 64, dtype=np.float32), ["a", "a", "b", "b"],
                             previews={0: "0.jpg"})
    from PIL import Image

    cache = settings.data_dir / "wide" / "image_cache"
    cache.mkdir(parents=True)
    Image.new("RGB", (32, 32), "red").save(cache / "0.jpg")
    with pytest.raises(IndexNotReadyError, match="rebuild with the current backbone"):
        run_evaluation(settings, spec, progress=False, encoder=tiny_encoder)
