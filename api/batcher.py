"""Micro-batcher: concurrent queries share one forward pass, run by one worker thread off the event loop.

A request announces itself with :meth:`MicroBatcher.expect` before it decodes its image, and
:meth:`MicroBatcher.submit` its preprocessed pixels afterwards. The worker takes everything
queued; it waits (at most ``max_wait_ms``) for more only while announced requests are still
preprocessing, so a lone query never pays the wait and a burst becomes one batch.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from core.errors import OverloadedError

logger = logging.getLogger(__name__)

BatchFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class _Job:
    item: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


def _resolve(job: _Job, result: np.ndarray | None, error: BaseException | None) -> None:
    def _set() -> None:
        if job.future.done():  # the client went away
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    job.loop.call_soon_threadsafe(_set)


class MicroBatcher:
    """Feeds ``fn(stacked items) -> rows`` from an asyncio-facing bounded queue."""

    def __init__(self, fn: BatchFn, *, name: str, max_batch: int = 16, max_wait_ms: float = 5.0,
                 max_queue: int = 256) -> None:
        self._fn = fn
        self.name = name
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._incoming = 0
        self._incoming_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"batcher-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    @contextmanager
    def expect(self) -> Iterator[None]:
        """Mark a request as on its way (decoding), so the worker may wait briefly for it."""
        with self._incoming_lock:
            self._incoming += 1
        try:
            yield
        finally:
            with self._incoming_lock:
                self._incoming -= 1

    async def submit(self, item: np.ndarray) -> np.ndarray:
        """Queue one item; resolves to its row of the batch result."""
        loop = asyncio.get_running_loop()
        job = _Job(item=item, future=loop.create_future(), loop=loop)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise OverloadedError(f"{self._queue.maxsize} queries already waiting; retry shortly") from None
        return await job.future

    def _collect(self, first: _Job) -> list[_Job]:
        jobs = [first]
        deadline = time.perf_counter() + self.max_wait
        while len(jobs) < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self._incoming <= 0:
                    break
                try:
                    job = self._queue.get(timeout=min(remaining, 0.001))
                except queue.Empty:
                    continue
            if job is None:
                self._queue.put(None)  # stop after this batch
                break
            jobs.append(job)
        return jobs

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = self._collect(first)
            try:
                rows = self._fn(np.stack([j.item for j in jobs]))
                for job, row in zip(jobs, rows):
                    _resolve(job, row, None)
            except BaseException as exc:  # hand the failure to every waiting request
                logger.exception("batch of %d failed in %s", len(jobs), self.name)
                for job in jobs:
                    _resolve(job, None, exc)
            self.batches += 1
            self.items += len(jobs)
