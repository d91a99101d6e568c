"""Shared type aliases and string enums."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeAlias

import numpy as np
from numpy.typing import NDArray

Embeddings: TypeAlias = NDArray[np.float32]
"""Row-wise L2-normalised float32 vectors, shape (n, dim)."""


class PhaseName(StrEnum):
    VALIDATION = "data_validation"
    DOWNLOAD = "image_download"
    EXTRACTION = "feature_extraction"
    INDEX = "index_building"


class IndexType(StrEnum):
    AUTO = "auto"
    FLAT = "flat"
    IVF = "ivf"
    HNSW = "hnsw"
    IVFSQ = "ivfsq"
    IVFPQ = "ivfpq"


class StoreKind(StrEnum):
    """Where a model's catalogue lives: the embedded SQLite + FAISS store, or a Milvus collection."""

    LOCAL = "local"
    MILVUS = "milvus"


class Executor(StrEnum):
    """Where the download and extraction phases run: this process, or a Ray cluster."""

    LOCAL = "local"
    RAY = "ray"


class Metric(StrEnum):
    COSINE = "cosine"
    EUCLIDEAN = "euclidean"


class Device(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Precision(StrEnum):
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
