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
from typing import IO, TYPE_CHECKING, Any
from collections.abc import Callable, Sequence
from urllib.parse import urlparse

import numpy as np

from core.config import Settings
from core.errors import BackboneLoadError
from core.types import Device, Embeddings, Precision
from utils.images import ShapePolicy, model_view, read_model_view

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


def _names_a_folder(backbone: str) -> bool:
    """A path no hub id can be (hub ids are ``name`` or ``org/name``): absolute, ``./``, ``~``, deeper."""
    return backbone.startswith(("/", ".", "~", "\\")) or backbone.rstrip("/").count("/") > 1 or backbone.endswith("/")


def check_backbone_folder(backbone: str) -> None:
    """A backbone that can only be a folder, and is not there: BackboneLoadError saying so (no torch import)."""
    if _names_a_folder(backbone) and not Path(backbone).expanduser().exists():
        raise BackboneLoadError(f"the CLIP folder {backbone!r} does not exist (IMAGESEARCH_CLIP_MODEL, or the "
                                "model's backbone in model.json): point it at a folder holding a CLIP checkpoint "
                                "(config.json, model.safetensors, tokenizer files, preprocessor_config.json)")


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

    check_backbone_folder(backbone)
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
    size: int  # the shorter side the reference resizes to
    crop: int  # the square the model sees
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _side(spec: Any, *keys: str) -> int | None:
    """The first of ``keys`` set in a processor's size spec (a dict, transformers' SizeDict, or an int)."""
    if isinstance(spec, int):
        return spec
    for key in keys:
        value = spec.get(key) if isinstance(spec, dict) else getattr(spec, key, None)
        if value:
            return int(value)
    return None


def _preprocess_spec(processor: Any) -> _Preprocess:
    size = _side(processor.size, "shortest_edge") or min(_side(processor.size, "height") or 224,
                                                         _side(processor.size, "width") or 224)
    crop = min(_side(processor.crop_size, "height") or size, _side(processor.crop_size, "width") or size)
    mean, std = (tuple(float(v) for v in processor.image_mean), tuple(float(v) for v in processor.image_std))
    return _Preprocess(size=size, crop=crop, mean=mean, std=std)


DEFAULT_BATCH = {"cpu": 32, "cuda": 256}  # images per forward pass when IMAGESEARCH_BATCH_SIZE is 0


@dataclass(frozen=True)
class View:
    """How a backbone sees an image file: CLIP's centre view for a ``size`` shorter side and a ``crop`` square,
    resized to the crop on the host (``resize``) or left at its decoded size for the device to resize. Small and
    picklable: preprocessing processes get this, never the model."""

    size: int
    crop: int
    resize: bool

    def load(self, source: str | Path | IO[bytes], policy: ShapePolicy | None = None) -> np.ndarray:
        """uint8 HWC pixels of an image file of ours (e.g. a cached image); see ``ClipEncoder.load_pixels``."""
        return read_model_view(source, self.size, self.crop, resize=self.resize, policy=policy)


@dataclass(frozen=True)
class Staged:
    """A batch of uint8 HWC images ready to cross to the device: one tensor per image shape (pinned on CUDA), with
    the batch positions it holds."""

    size: int
    groups: list[tuple[list[int], torch.Tensor]]


def _check_uint8(pixels: np.ndarray) -> None:
    if pixels.dtype != np.uint8 or pixels.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB images (HWC), got {pixels.dtype} of shape {pixels.shape}")


def stack(pixels: Sequence[np.ndarray] | np.ndarray, *, pin: bool = False,
          empty: Callable[..., torch.Tensor] | None = None) -> Staged:
    """uint8 HWC images stacked for the device, one tensor per shape (in pinned memory with ``pin``, so that the
    copy to a GPU is asynchronous), each from ``empty`` (default ``torch.empty``)."""
    import torch

    if isinstance(pixels, np.ndarray) and pixels.ndim == 4 and not pin:
        _check_uint8(pixels)
        return Staged(len(pixels), [(list(range(len(pixels))), torch.from_numpy(np.ascontiguousarray(pixels)))])
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(pixels):
        _check_uint8(image)
        by_shape.setdefault(image.shape, []).append(i)
    groups, empty = [], empty or torch.empty
    for shape, idx in by_shape.items():
        host = empty((len(idx), *shape), dtype=torch.uint8, pin_memory=pin)
        np.stack([pixels[i] for i in idx], out=host.numpy())
        groups.append((idx, host))
    return Staged(len(pixels), groups)


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
        mean = torch.tensor(self._pre.mean, device=self.device).reshape(1, 3, 1, 1)
        std = torch.tensor(self._pre.std, device=self.device).reshape(1, 3, 1, 1)
        # (x / 255 - mean) / std as one multiply and one add on the 0-255 pixels
        self._scale, self._shift = 1 / (255 * std), -mean / std
        self.pin = self.device == "cuda"  # uint8 batches cross from pinned memory, asynchronously
        self.resize_on_device = self.device != "cpu"  # a GPU resizes for free; a CPU host resizes once, in PIL
        self.default_batch = DEFAULT_BATCH.get(self.device, DEFAULT_BATCH["cpu"])
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
        """The model's input for one decoded image: uint8 HWC, ``input_size`` square (CLIP's bicubic resize of
        the shorter side and centre crop, done as one resize). Normalisation happens on the device."""
        return model_view(image, self._pre.size, self._pre.crop)

    @property
    def view(self) -> View:
        """This backbone's ``View`` of an image file: resized on the host on a CPU, on the device on a GPU."""
        return View(self._pre.size, self._pre.crop, resize=not self.resize_on_device)

    def load_pixels(self, source: str | Path | IO[bytes]) -> np.ndarray:
        """``pixels`` of an image file of ours (a cached image), a JPEG decoded at the smallest DCT scale that
        covers the model's input. On a GPU the centre square comes back at its decoded size instead: the
        device resizes it (``encode_staged``), so the host only decodes and crops."""
        return self.view.load(source)

    def stage(self, pixels: Sequence[np.ndarray] | np.ndarray) -> Staged:
        """Stack uint8 HWC images for the trip to the device (pinned memory on CUDA, so the copy is
        asynchronous). Thread-safe: a preprocessing thread stages the next batch while the model runs."""
        return stack(pixels, pin=self.pin)

    def model_input(self, staged: Staged) -> torch.Tensor:
        """The staged batch on the device as the model takes it: (n, 3, crop, crop) in the model's dtype, each
        image resized there if it came as a larger square (bicubic, antialiased like PIL), then normalised."""
        import torch

        if len(staged.groups) == 1:  # one shape: the batch itself, in order
            return self._normalised(staged.groups[0][1])
        crop = self._pre.crop
        out = torch.empty((staged.size, 3, crop, crop), dtype=self.dtype, device=self.device)
        for idx, host in staged.groups:
            out[idx] = self._normalised(host)
        return out

    def _normalised(self, host: torch.Tensor) -> torch.Tensor:
        """uint8 HWC images of one shape on the device, channels first, at the crop and normalised."""
        import torch.nn.functional as F

        crop = self._pre.crop
        # channels first in memory while still uint8 (a quarter of the bytes to move): the model's first
        # convolution is slower on a channels-last batch (measured on CPU, ViT-B/32 bf16: 1.7% a pass)
        x = host.to(self.device, non_blocking=True).permute(0, 3, 1, 2).contiguous().float()
        if tuple(x.shape[-2:]) != (crop, crop):
            x = F.interpolate(x, size=(crop, crop), mode="bicubic", antialias=True, align_corners=False)
            x = x.clamp_(0, 255)
        return x.mul_(self._scale).add_(self._shift).to(self.dtype)

    def encode_staged(self, staged: Staged) -> Embeddings:
        import torch

        if staged.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock, torch.inference_mode():
            out = self.model.get_image_features(pixel_values=self.model_input(staged))
            feats = out if isinstance(out, torch.Tensor) else out.pooler_output
            return l2_normalize(feats.float().cpu().numpy())

    def encode_pixels(self, pixels: Sequence[np.ndarray] | np.ndarray) -> Embeddings:
        """Embed a batch of uint8 HWC images (``pixels`` / ``load_pixels`` output; shapes may differ)."""
        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_staged(self.stage(pixels))

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
