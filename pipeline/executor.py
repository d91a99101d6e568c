"""What a phase hands an executor and what comes back (clip-retrieval's runner: the phase is the reader and the
writer, the executor the mapper). The download phase hands refs to fetch and gets each one's outcome; the
extraction phase hands the views to embed and gets their vectors, batch by batch, with the products they complete.
Phases record the results (build state, store); an executor decides where the work runs, and writes only the image
cache files, through the phase's cache, where it has them (a local worker process; Ray's driver). Two implement this:
pipeline/local_executor.py (this machine's threads and processes) and pipeline/ray_executor.py (a Ray cluster);
the run's context picks one (IMAGESEARCH_EXECUTOR)."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from tqdm import tqdm

    from core.encoder import ClipEncoder
    from pipeline.image_cache import ImageCache, Outcome, Target
    from pipeline.preprocess import Failure, Item
    from pipeline.state import StagedProduct
    from utils.http_fetch import Fetcher

Products = Iterable[list["StagedProduct"]]  # chunks of staged products, ready to be written


@dataclass(frozen=True)
class Downloads:
    """The download phase's side of its work: where local refs live, the cache each image is written to, the
    phase's fetcher (its policy for executors that fetch elsewhere), and the phase's bar and report details."""

    data_dir: Path
    cache: ImageCache
    fetcher: Fetcher
    bar: tqdm
    details: dict[str, Any]


@dataclass
class Embedded:
    """One batch of views embedded: the cache names that worked with their vectors (a row each), and those that
    did not, each with a reason label and a message."""

    keys: list[str]
    vectors: np.ndarray
    failed: list[Failure]


class Views(Protocol):
    """The extraction phase's side of its work: the views to embed, in whichever order suits the executor."""

    image_cache: Path
    backbone: str  # for an executor whose workers load their own encoder
    bar: tqdm
    details: dict[str, Any]

    def in_order(self, size: int) -> Iterator[tuple[list[Item], list[list[StagedProduct]]]]:
        """Batches of ``size`` views in product order, each with the products whose last view it holds."""

    def unordered(self) -> tuple[list[str], Products]:
        """Every view without a vector, and the products to write once they all have one."""

    def encoder(self) -> ClipEncoder:
        """The run's encoder, loaded on first use (the bar says so meanwhile)."""


class PhaseExecutor(Protocol):
    """Runs the phases' per-item work somewhere; the phases record what comes back."""

    def download(self, todo: list[Target], job: Downloads) -> Iterator[Outcome]:
        """Each target's outcome as it finishes, its cache file written (``job.bar`` counts them)."""

    def embed(self, views: Views) -> Generator[tuple[Embedded, Products]]:
        """Each batch as it is embedded, with the products whose views are then all embedded (every product,
        at the end, for an executor that returns batches out of order)."""

    def close(self) -> None:
        """Release what the executor started (a Ray instance)."""
