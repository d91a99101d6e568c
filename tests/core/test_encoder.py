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


@pytest.fixture(scope="module")
def cached_copies(tmp_path_factory):
    """Three photo-like images as the download phase caches them (shorter side 384, JPEG)."""
    from utils.images import ShapePolicy
    from utils.images import decode_image, encode_jpeg

    folder, rng = tmp_path_factory.mktemp("cache"), np.random.default_rng(1)
    paths = []
    for i, size in enumerate([(640, 480), (480, 700), (512, 512)]):
        base = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
        noisy = np.clip(np.asarray(base, dtype=np.int16) + rng.integers(-12, 12, (size[1], size[0], 3)), 0, 255)
        original = encode_jpeg(Image.fromarray(noisy.astype(np.uint8)))
        paths.append(folder / f"{i}.jpg")
        paths[-1].write_bytes(encode_jpeg(decode_image(original, policy=ShapePolicy(), shorter_side=384)))
    return paths


@pytest.mark.parametrize("on_device", [False, True], ids=["host-resize", "device-resize"])
def test_cached_images_reach_the_model_as_clip_processor_would_give_them(encoder, tiny_clip, cached_copies,
                                                                        on_device, monkeypatch):
    """The extraction path (draft decode, one resize on the host, or a crop resized and normalised on the
    device as on a GPU) feeds the model what CLIPProcessor would, pixel for pixel within JPEG-draft noise."""
    import torch
    from transformers import CLIPProcessor

    monkeypatch.setattr(encoder, "resize_on_device", on_device)
    pixels = [encoder.load_pixels(p) for p in cached_copies]
    assert all(p.dtype == np.uint8 for p in pixels)
    if on_device:  # a square at the decoded size: the JPEG draft shrinks by powers of two, never below the input
        assert all(p.shape[0] == p.shape[1] and 64 <= p.shape[0] < 128 for p in pixels), [p.shape for p in pixels]
    else:
        assert {p.shape for p in pixels} == {(64, 64, 3)}
    ours = encoder.model_input(encoder.stage(pixels)).float()
    processor = CLIPProcessor.from_pretrained(tiny_clip)
    reference = processor(images=[Image.open(p).convert("RGB") for p in cached_copies], return_tensors="pt")
    assert ours.shape == reference["pixel_values"].shape
    assert float((ours - reference["pixel_values"]).abs().mean()) < 0.1  # a channel or scale slip is > 0.5
    with torch.no_grad():
        out = encoder.model.get_image_features(**reference)
    ref = (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.min(np.sum(ref * encoder.encode_pixels(pixels), axis=1)) > 0.999


def test_a_batch_of_mixed_shapes_keeps_its_order(encoder, monkeypatch):
    monkeypatch.setattr(encoder, "resize_on_device", True)
    red, blue = np.zeros((80, 80, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255
    mixed = encoder.encode_pixels([red, blue, red])
    assert np.allclose(mixed[0], mixed[2], atol=1e-5) and np.allclose(mixed[1], encoder.encode_pixels([blue])[0],
                                                                     atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        encoder.encode_pixels([red.astype(np.float32)])
