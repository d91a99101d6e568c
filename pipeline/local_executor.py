"""``executor=local``: the phases' per-item work on this machine. Downloads: ``download_workers`` threads fetch
URLs, and a process per core verifies, downscales and writes every image. Extraction: a process per core decodes
and crops the views (pipeline/preprocess.py) at most ``_AHEAD`` batches ahead of the model, which embeds them
here, in product order, so each chunk of products can be written as soon as its last view is embedded."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np

from core.config import Settings
from pipeline.executor import Downloads, Embedded, Products, Views
from pipeline.image_cache import ImageCache, Outcome, Target, failed_outcome, prepare, read_local
from pipeline.preprocess import Preprocessor, process_pool, worker_count
from pipeline.state import StagedProduct
from utils.http_fetch import FetchError, Fetcher

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
        cpu = process_pool(worker_count(settings.preprocess_workers))
        net = ThreadPoolExecutor(max_workers=settings.download_workers, thread_name_prefix="download")
        try:
            futures = [cpu.submit(_process_local, t, job.cache, settings.max_image_bytes) if t.url is None
                       else net.submit(_process_remote, t, job.fetcher, job.cache, cpu) for t in todo]
            for future in as_completed(futures):
                job.bar.update(1)
                yield future.result()  # an unexpected error (disk full, a bug) fails the run
        finally:
            net.shutdown(wait=True, cancel_futures=True)
            cpu.shutdown(wait=True, cancel_futures=True)

    def embed(self, views: Views) -> Generator[tuple[Embedded, Products]]:
        """The views in product order, preprocessed on every core, embedded batch after batch."""
        encoder = views.encoder()
        settings = self.settings
        size = settings.batch_size or encoder.default_batch
        with Preprocessor[list[list[StagedProduct]]](encoder, worker_count(settings.preprocess_workers),
                                                     policy=settings.image_policy, ahead=_AHEAD, batch=size) as pre:
            for batch, products in pre.map(views.in_order(size)):
                vectors = (encoder.encode_staged(batch.staged) if batch.staged is not None
                           else np.zeros((0, encoder.dim), np.float32))
                yield Embedded(batch.keys, vectors, batch.failed), products

    def close(self) -> None:
        pass


def _process_local(target: Target, cache: ImageCache, max_bytes: int) -> Outcome:
    """Read, verify and cache one local file. Runs in a worker process."""
    return _cached(target, lambda: read_local(target, max_bytes), cache)


def _process_remote(target: Target, fetcher: Fetcher, cache: ImageCache, cpu: futures.Executor) -> Outcome:
    """Fetch one URL on a download thread, then verify and cache it in a worker process."""
    try:
        data = fetcher.fetch(target.url or "")
    except FetchError as err:
        return failed_outcome(target.ref, err)
    return cpu.submit(_process_bytes, target, data, cache).result()


def _process_bytes(target: Target, data: bytes, cache: ImageCache) -> Outcome:
    return _cached(target, lambda: data, cache)


def _cached(target: Target, read: Callable[[], bytes], cache: ImageCache) -> Outcome:
    outcome, image = prepare(target, read, cache)
    if image is not None:
        cache.write(image)
    return outcome
