"""The CLIP encoder: tiny CLIP through the normal loading path, preprocessing parity, offline message."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from core.config import PROJECT_ROOT
from core.encoder import ClipEncoder
from core.errors import BackboneLoadError
from core.types import Precision


@pytest.fixture(scope="module")
def encoder(tiny_clip):
    return ClipEncoder(str(tiny_clip), precision=Precision.FP32, threads=1)


def test_embeddings_are_unit_float32_and_deterministic(encoder):
    images = [Image.new("RGB", (120, 90), "red"), Image.new("RGB", (50, 70), "blue")]
    a, b = encoder.encode_images(images), encoder.encode_images(images)
    assert a.dtype == np.float32 and a.shape == (2, encoder.dim)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5) and np.allclose(a, b)
    texts = encoder.encode_texts(["a red mug", "blue lamp"])
    assert texts.shape == (2, encoder.dim) and np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)


def test_matches_the_reference_clip_processor(encoder, tiny_clip):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (90, 130, 3), dtype=np.uint8)) for _ in range(3)]
    processor, model = CLIPProcessor.from_pretrained(tiny_clip), CLIPModel.from_pretrained(tiny_clip).eval()
    with torch.no_grad():
        out = model.get_image_features(**processor(images=images, return_tensors="pt"))
    ref = (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.min(np.sum(ref * encoder.encode_images(images), axis=1)) > 0.999


def test_bf16_stays_close_to_fp32(tiny_clip, encoder):
    bf16 = ClipEncoder(str(tiny_clip), precision=Precision.BF16, threads=1)
    image = [Image.new("RGB", (100, 100), (200, 30, 90))]
    assert float(np.sum(bf16.encode_images(image) * encoder.encode_images(image))) > 0.99


def test_unreachable_hub_fails_fast_with_a_clear_line():
    start = time.monotonic()
    with pytest.raises(BackboneLoadError, match="IMAGESEARCH_CLIP_MODEL"):
        ClipEncoder("openai/clip-vit-base-patch32")
    assert time.monotonic() - start < 30


def test_not_a_checkpoint_folder(tmp_path):
    with pytest.raises(BackboneLoadError, match="not a loadable CLIP checkpoint"):
        ClipEncoder(str(tmp_path))


def test_tiny_clip_cli_writes_a_loadable_folder(tmp_path):
    out = tmp_path / "tiny"
    proc = subprocess.run([sys.executable, "-m", "utils.tiny_clip", str(out)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "preprocessor_config.json"} <= {
        p.name for p in out.iterdir()}
    assert ClipEncoder(str(out), threads=1).encode_texts(["hello"]).shape == (1, 32)
