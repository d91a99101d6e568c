"""CLIP encoder: loads any CLIP-family checkpoint (hub id or folder) and embeds images and texts.

torch and transformers are imported inside functions so that CLIs that never embed start fast.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from collections.abc import Sequence
from urllib.parse import urlparse

import numpy as np

from core.config import Settings
from core.errors import BackboneLoadError
from core.types import Device, Embeddings, Precision

if TYPE_CHECKING:
    import torch
    from PIL import Image

logger = logging.getLogger(__name__)

_HUB_HOST = "huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect instead of the hub client's minute of retries (also ``test_setup.py``'s probe)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT") or f"https://{_HUB_HOST}"
    parsed = urlparse(endpoint)
    try:
        with socket.create_connection((parsed.hostname or _HUB_HOST, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


OFFLINE_HINT = ("point IMAGESEARCH_CLIP_MODEL at a local folder holding the checkpoint (download it once with "
                "`huggingface-cli download openai/clip-vit-base-patch32 --local-dir models/clip`), or make "
                "a tiny test model with `python -m utils.tiny_clip models/tiny_clip`")
"""What to do without access to the model hub (the README's offline section, in one line)."""


def _offline_message(backbone: str, detail: str) -> str:
    return f"could not load CLIP weights {backbone!r} ({detail}). Without network access, {OFFLINE_HINT}"


def _load_pretrained(backbone: str) -> tuple[Any, Any, Any]:
    """(model, tokenizer, image_processor) from a local folder, the hub cache, or the hub."""
    import transformers
    from transformers import AutoTokenizer, CLIPModel

    transformers.utils.logging.disable_progress_bar()
    # the PIL processor: the default one wants torchvision, which does not import beside our torch
    CLIPImageProcessor = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor

    def load(**kw: Any) -> tuple[Any, Any, Any]:
        return (CLIPModel.from_pretrained(backbone, **kw), AutoTokenizer.from_pretrained(backbone, **kw),
                CLIPImageProcessor.from_pretrained(backbone, **kw))

    if Path(backbone).expanduser().exists():
        backbone = str(Path(backbone).expanduser())
        try:
            return load()
        except Exception as exc:
            raise BackboneLoadError(f"folder {backbone!r} is not a loadable CLIP checkpoint: "
                                    f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    try:
        return load(local_files_only=True)
    except Exception:
        pass  # not cached yet: fall through to the hub
    if not hub_reachable():
        raise BackboneLoadError(_offline_message(backbone, "the model hub cannot be reached"))
    try:
        return load()
    except Exception as exc:
        raise BackboneLoadError(_offline_message(backbone, str(exc).splitlines()[0][:200])) from None


def resolve_device(device: Device) -> str:
    import torch

    if device == Device.CUDA and not torch.cuda.is_available():
        raise BackboneLoadError("IMAGESEARCH_DEVICE=cuda but no CUDA device is available")
    if device == Device.AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device.value


def resolve_precision(precision: Precision, device: str) -> torch.dtype:
    """auto: bf16 where the hardware runs it natively (AVX-512 bf16 CPUs, recent GPUs), else fp32/fp16."""
    import torch

    if precision == Precision.AUTO:
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_runs_bf16() else torch.float32
    return {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}[precision]


def cpu_runs_bf16() -> bool:
    """True where this CPU computes bf16 natively (AVX-512 bf16 / AMX), which ``auto`` precision then uses."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class _Preprocess:
    size: int
    crop: int
    mean: np.ndarray
    std: np.ndarray


def _preprocess_spec(processor: Any) -> _Preprocess:
    size = processor.size.get("shortest_edge") or min(processor.size.get("height", 224),
                                                      processor.size.get("width", 224))
    crop = processor.crop_size or {"height": size, "width": size}
    return _Preprocess(size=int(size), crop=int(min(crop["height"], crop["width"])),
                       mean=np.asarray(processor.image_mean, dtype=np.float32).reshape(1, 1, 3),
                       std=np.asarray(processor.image_std, dtype=np.float32).reshape(1, 1, 3))


def l2_normalize(x: np.ndarray) -> Embeddings:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    out: Embeddings = (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return out


class ClipEncoder:
    """Embeds images and texts into L2-normalised float32 vectors with one CLIP backbone."""

    def __init__(self, backbone: str, *, device: Device = Device.AUTO, precision: Precision = Precision.AUTO,
                 threads: int = 0) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.backbone = backbone
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        model, self.tokenizer, processor = _load_pretrained(backbone)
        self.model = model.eval().to(device=self.device, dtype=self.dtype)
        self._pre = _preprocess_spec(processor)
        self.dim = int(model.config.projection_dim)
        self._lock = threading.Lock()  # one forward at a time; torch already uses every core
        logger.info("loaded %s on %s (%s), dim %d, input %dpx", backbone, self.device,
                    str(self.dtype).removeprefix("torch."), self.dim, self._pre.crop)

    @classmethod
    def from_settings(cls, settings: Settings, backbone: str | None = None) -> ClipEncoder:
        return cls(backbone or settings.clip_model, device=settings.device, precision=settings.precision,
                   threads=settings.torch_threads)

    @property
    def lock(self) -> threading.Lock:
        """Held during every forward pass (explanations take it too)."""
        return self._lock

    @property
    def input_size(self) -> int:
        return self._pre.crop

    @property
    def precision_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def pixels(self, image: Image.Image) -> np.ndarray:
        """CLIP preprocessing (bicubic resize of the shorter side, centre crop, normalise) -> HWC float32."""
        from PIL import Image as PILImage

        img = image if image.mode == "RGB" else image.convert("RGB")
        w, h = img.size
        ratio = self._pre.size / min(w, h)
        size = (max(self._pre.crop, round(w * ratio)), max(self._pre.crop, round(h * ratio)))
        if size != (w, h):
            img = img.resize(size, PILImage.Resampling.BICUBIC, reducing_gap=3.0)
        left, top = (size[0] - self._pre.crop) // 2, (size[1] - self._pre.crop) // 2
        img = img.crop((left, top, left + self._pre.crop, top + self._pre.crop))
        arr = np.asarray(img, dtype=np.float32) * np.float32(1 / 255)
        out: np.ndarray = (arr - self._pre.mean) / self._pre.std
        return out

    def encode_pixels(self, pixels: np.ndarray) -> Embeddings:
        """Embed a batch of preprocessed images, shape (n, H, W, 3)."""
        import torch

        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
        with self._lock, torch.inference_mode():
            out = self.model.get_image_features(pixel_values=batch.to(self.device, self.dtype))
            feats = out if isinstance(out, torch.Tensor) else out.pooler_output
            return l2_normalize(feats.float().cpu().numpy())

    def encode_images(self, images: Sequence[Image.Image]) -> Embeddings:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_pixels(np.stack([self.pixels(im) for im in images]))

    def encode_texts(self, texts: Sequence[str]) -> Embeddings:
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        with self._lock, torch.inference_mode():
            out = self.model.get_text_features(**tokens)
            feats = out if isinstance(out, torch.Tensor) else out.pooler_output
            return l2_normalize(feats.float().cpu().numpy())
