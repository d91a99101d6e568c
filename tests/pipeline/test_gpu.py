"""The demo catalogue built on a GPU (uint8 across the bus, resized and normalised there, bf16) holds the
same vectors as the CPU fp32 build. Needs CUDA; skips with the reason elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

from core.catalogue_store import open_store
from core.model_config import ModelRegistry
from pipeline.runner import PhaseStatus, run_model
from utils.demo_catalogue import write_demo


def _no_cuda() -> str:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return "" if torch.cuda.is_available() else f"no CUDA device (torch {torch.__version__})"


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(_no_cuda()), reason=_no_cuda() or "CUDA present")]


def _build(settings) -> dict[str, np.ndarray]:
    write_demo(settings.data_dir, general_per_category=3, shirts_per_category=2)
    spec = ModelRegistry.discover(settings).get("general")
    outcomes = run_model(settings, spec, progress=False)
    assert [o.status for o in outcomes] == [PhaseStatus.RAN] * 4
    store = open_store(settings, spec, open_index=False)
    try:
        ids = sorted(pid for batch, _ in store.scan_vectors() for pid in batch)
        return dict(zip(ids, store.vectors(ids, clip=True), strict=True))
    finally:
        store.close()


def test_the_demo_catalogue_built_on_cuda_matches_the_cpu_fp32_build(make_settings, tmp_path):
    cpu = _build(make_settings(root=tmp_path / "cpu", precision="fp32"))
    gpu = _build(make_settings(root=tmp_path / "gpu", device="cuda", torch_threads=0))  # auto precision: bf16
    assert sorted(gpu) == sorted(cpu) and len(cpu) == 18
    ids = sorted(cpu)
    a, b = np.stack([cpu[i] for i in ids]), np.stack([gpu[i] for i in ids])
    cosines = np.sum(a * b, axis=1)
    assert cosines.min() >= 0.995, sorted(cosines)[:3]
    # random weights put every product within ~0.99 of every other, so also: each GPU vector is nearest to its
    # own product's CPU vector (the GPU's error is well under the distance between two products)
    distances = np.linalg.norm(b[:, None] - a[None], axis=2)
    assert (np.argmin(distances, axis=1) == np.arange(len(ids))).all()
