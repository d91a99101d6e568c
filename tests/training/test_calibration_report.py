"""Evaluation's calibration block: reliability bins, expected calibration error and the chart."""

from __future__ import annotations

import numpy as np

from core.calibration import Calibration, LogisticMap, fit_logistic, save_calibration
from training.calibration_report import calibration_section, reliability


def test_reliability_of_a_calibrated_predictor_has_small_ece():
    rng = np.random.default_rng(0)
    predicted = rng.uniform(size=20_000)
    relevant = rng.uniform(size=20_000) < predicted  # relevant exactly as often as predicted
    good = reliability(predicted, relevant)
    assert good["ece"] < 0.02 and sum(b["count"] for b in good["bins"]) == 20_000
    overconfident = reliability(np.full(1000, 0.95), rng.uniform(size=1000) < 0.5)
    assert overconfident["ece"] > 0.4


def test_calibration_section_writes_bins_ece_and_chart(tmp_path):
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 8))
    labels = np.repeat(np.arange(4), 25)
    vectors = centres[labels] + 0.6 * rng.normal(size=(100, 8))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    sims = vectors @ vectors.T
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    image = fit_logistic(sims[same], sims[~same & ~np.eye(100, dtype=bool)])
    save_calibration(tmp_path, Calibration(image=image))
    rows = np.arange(100)
    section = calibration_section(tmp_path, vectors, rows, vectors, labels, title="t")
    assert len(section["bins"]) == 10 and 0 <= section["ece"] <= 1 and section["pairs"] == 1000
    assert (tmp_path / "evaluation_reliability.png").is_file()
    assert calibration_section(tmp_path / "none", vectors, rows, vectors, labels, title="t")["note"]
    assert isinstance(LogisticMap(1.0, 0.0)(0.0), np.ndarray)
