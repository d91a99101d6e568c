"""``executor=local``: the phases' per-item work on this machine. Downloads: ``download_workers`` threads fetch
URLs, and a process per core verifies, downscales and writes every image. Extraction: a process per core decodes
and crops the views (pipeline/preprocess.py) at most ``_AHEAD`` batches ahead of the model (on a CPU the model's
threads fill, between its passes: ``_ahead``), which embeds them here, in product order, so each chunk of products
can be written as soon as its last view is embedded."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor, as_completed
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from core.config import Settings
from pipeline.executor import Downloads, Embedded, Products, Views
from pipeline.image_cache import ImageCache, Outcome, Target, failed_outcome, prepare, read_local
from pipeline.preprocess import Preprocessor, process_pool, worker_count
from pipeline.state import StagedProduct
from utils.http_fetch import FetchError, Fetcher

if TYPE_CHECKING:
    from core.encoder import ClipEncoder

_AHEAD = 2  # batches preprocessed ahead of the model


class LocalExecutor:
    """The local executor (see the module's docstring); it starts nothing that outlives a call."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def download(self, todo: list[Target], job: Downloads) -> Iterator[Outcome]:
        """Outcomes as they finish, each image written to the cache by the process that verified it."""
        if not todo:
            return
        settings = self.settings
        workers = worker_count(settings.preprocess_workers)
        cpu = process_pool(workers)
        net = ThreadPoolExecutor(max_workers=settings.download_workers, thread_name_prefix="download")
        try:
            local = [t for t in todo if t.url is None]
            size = _local_chunk(len(local), workers)
            tasks = [cpu.submit(_process_locals, local[i:i + size], job.cache, settings.max_image_bytes)
                     for i in range(0, len(local), size)]
            tasks += [net.submit(_process_remote, t, job.fetcher, job.cache, cpu) for t in todo if t.url is not None]
            for future in as_completed(tasks):
                outcomes = future.result()  # an unexpected error (disk full, a bug) fails the run
                job.bar.update(len(outcomes))
                yield from outcomes
        finally:
            net.shutdown(wait=True, cancel_futures=True)
            cpu.shutdown(wait=True, cancel_futures=True)

    def embed(self, views: Views) -> Generator[tuple[Embedded, Products]]:
        """The views in product order, preprocessed on every core, embedded batch after batch."""
        encoder = views.encoder()
        settings = self.settings
        size = settings.batch_size or encoder.default_batch
        with Preprocessor[list[list[StagedProduct]]](encoder, worker_count(settings.preprocess_workers),
                                                     policy=settings.image_policy, ahead=_ahead(encoder),
                                                     batch=size) as pre:
            for batch, products in pre.map(views.in_order(size)):
                vectors = (encoder.encode_staged(batch.staged) if batch.staged is not None
                           else np.zeros((0, encoder.dim), np.float32))
                yield Embedded(batch.keys, vectors, batch.failed), products

    def close(self) -> None:
        pass


def _ahead(encoder: ClipEncoder) -> int:
    """Batches preprocessed ahead of the model. On a GPU, ``_AHEAD``, so it never waits. On a CPU whose cores
    the model's threads all take, none: the next batch is preprocessed on every core between two forward
    passes. Beside a pass, a worker takes a core from one of the model's threads, and every thread of a pass
    waits for the slowest, so the pass loses at least what the worker spends (ViT-B/32 on 2 cores, 128 images,
    7 alternated rounds: 0.998 of the model-only rate in lockstep against 0.985 two batches ahead, a gap within
    this shared machine's noise)."""
    import torch

    if encoder.device != "cpu" or torch.get_num_threads() < len(os.sched_getaffinity(0)):
        return _AHEAD
    return 0


def _local_chunk(files: int, workers: int) -> int:
    """Local files a worker takes at a time. A task's round trip costs the build process, serially, about half a
    millisecond (measured: a twentieth of what verifying and downscaling an image costs a worker), so up to
    ``_LOCAL_CHUNK`` files go together; at least four tasks a worker keep every core busy to the end."""
    return max(1, min(_LOCAL_CHUNK, files // (4 * workers)))


_LOCAL_CHUNK = 16


def _process_locals(targets: list[Target], cache: ImageCache, max_bytes: int) -> list[Outcome]:
    """Read, verify and cache local files. Runs in a worker process."""
    return [_cached(t, partial(read_local, t, max_bytes), cache) for t in targets]


def _process_remote(target: Target, fetcher: Fetcher, cache: ImageCache, cpu: futures.Executor) -> list[Outcome]:
    """Fetch one URL on a download thread, then verify and cache it in a worker process."""
    try:
        data = fetcher.fetch(target.url or "")
    except FetchError as err:
        return [failed_outcome(target.ref, err)]
    return [cpu.submit(_process_bytes, target, data, cache).result()]


def _process_bytes(target: Target, data: bytes, cache: ImageCache) -> Outcome:
    return _cached(target, lambda: data, cache)


def _cached(target: Target, read: Callable[[], bytes], cache: ImageCache) -> Outcome:
    outcome, image = prepare(target, read, cache)
    if image is not None:
        cache.write(image)
    return outcome
