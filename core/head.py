"""Fine-tuned projection head applied on top of frozen CLIP embeddings (safetensors, numpy inference).

File layout: tensors ``w0, b0, w1, b1, ...`` (PyTorch ``nn.Linear`` convention: ``y = x @ w.T + b``),
ReLU between layers, output L2-normalised. Header metadata ``format=imagesearch-head``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.encoder import l2_normalize
from core.errors import ConfigError
from core.types import Embeddings

HEAD_FORMAT = "imagesearch-head"


@dataclass(frozen=True)
class ProjectionHead:
    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    sha256: str

    @property
    def input_dim(self) -> int:
        return int(self.weights[0].shape[1])

    @property
    def output_dim(self) -> int:
        return int(self.weights[-1].shape[0])

    def apply(self, vectors: Embeddings) -> Embeddings:
        x = np.asarray(vectors, dtype=np.float32)
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = x @ w.T + b
            if i < len(self.weights) - 1:
                np.maximum(x, 0, out=x)
        return l2_normalize(x)


def save_head(path: Path, weights: list[np.ndarray], biases: list[np.ndarray]) -> Path:
    """Write a head atomically in the format :func:`load_head` reads."""
    from safetensors.numpy import save

    from utils.atomic import write_bytes_atomic

    tensors: dict[str, np.ndarray] = {}
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        tensors[f"w{i}"] = np.ascontiguousarray(w, dtype=np.float32)
        tensors[f"b{i}"] = np.ascontiguousarray(b, dtype=np.float32)
    return write_bytes_atomic(Path(path), save(tensors, metadata={"format": HEAD_FORMAT,
                                                                  "layers": str(len(weights))}))


def load_head(path: Path) -> ProjectionHead | None:
    """The head at ``path``, or None when there is no file. A malformed file raises ConfigError."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = Path(path)
    if not path.is_file():
        return None
    data = path.read_bytes()
    try:
        tensors = load(data)
    except (SafetensorError, ValueError) as exc:
        raise ConfigError(f"{path}: not a valid projection head ({exc})") from None
    layers = len([k for k in tensors if k.startswith("w")])
    try:
        weights = tuple(tensors[f"w{i}"] for i in range(layers))
        biases = tuple(tensors[f"b{i}"] for i in range(layers))
    except KeyError as exc:
        raise ConfigError(f"{path}: projection head is missing tensor {exc}") from None
    if not weights:
        raise ConfigError(f"{path}: projection head has no layers")
    return ProjectionHead(weights=weights, biases=biases, sha256=hashlib.sha256(data).hexdigest())
