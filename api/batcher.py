"""Micro-batcher: concurrent queries share one forward pass, run by one worker thread off the event loop.

The worker is also the backbone's only torch thread: loading, text queries and admin embeddings
go through :meth:`MicroBatcher.call`. (With GNU OpenMP, every thread that runs torch ops owns a
team of workers; once there are more such threads than cores, idle workers stop spinning and
every one of a forward pass's hundreds of parallel regions pays a wake-up: bf16 ViT-B/32 on 2 cores
measured ~45 ms instead of ~30.)

A request announces itself with :meth:`MicroBatcher.expect` before it decodes its image, and
:meth:`MicroBatcher.submit` its preprocessed pixels afterwards. The worker takes everything
queued; it waits (at most ``max_wait_ms``) for more only while announced requests are still
preprocessing, so a lone query never pays the wait and a burst becomes one batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import OverloadedError

logger = logging.getLogger(__name__)

BatchFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class _Job:
    item: Any  # pixels for the bound ``fn``; anything for a job's own ``fn`` (a text)
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop
    fn: Callable[[list[Any]], np.ndarray] | None = None  # None: the batcher's ``fn`` over stacked items


@dataclass
class _Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: concurrent.futures.Future[Any]


def _resolve(job: _Job, result: np.ndarray | None, error: BaseException | None) -> None:
    def _set() -> None:
        if job.future.done():  # the client went away
            return
        if error is not None:
            job.future.set_exception(error)
        elif result is not None:
            job.future.set_result(result)

    job.loop.call_soon_threadsafe(_set)


class MicroBatcher:
    """Feeds ``fn(stacked items) -> rows`` from an asyncio-facing bounded queue."""

    def __init__(self, fn: BatchFn | None, *, name: str, max_batch: int = 16, max_wait_ms: float = 5.0,
                 max_queue: int = 256) -> None:
        self.fn = fn  # may be bound after start(), once the model has loaded on the worker
        self.name = name
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._queue: queue.Queue[_Job | _Call | None] = queue.Queue(maxsize=max_queue)
        self._deferred: list[_Call] = []
        self._held: list[_Job] = []  # jobs of another kind met while collecting: they start the next batch
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

    def call(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args)`` on the worker thread, between batches."""
        job = _Call(fn=fn, args=args, future=concurrent.futures.Future())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise OverloadedError(f"{self._queue.maxsize} jobs already waiting; retry shortly") from None
        return job.future

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.wrap_future(self.call(fn, *args))

    async def submit(self, item: Any, fn: Callable[[list[Any]], np.ndarray] | None = None) -> np.ndarray:
        """Queue one item; resolves to its row of the batch result. Items queued with the same ``fn``
        (e.g. texts for the text tower) are batched together, ``fn(list of items)``; without one, the
        batcher's ``fn`` gets the items stacked."""
        loop = asyncio.get_running_loop()
        job = _Job(item=item, future=loop.create_future(), loop=loop, fn=fn)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise OverloadedError(f"{self._queue.maxsize} queries already waiting; retry shortly") from None
        row: np.ndarray = await job.future
        return row

    def _collect(self, first: _Job) -> list[_Job]:
        jobs = [first]
        held, self._held = self._held, []
        for waiting in held:
            (jobs if waiting.fn == first.fn and len(jobs) < self.max_batch else self._held).append(waiting)
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
            if isinstance(job, _Call):
                self._deferred.append(job)  # runs right after this batch
                continue
            if job.fn != first.fn:
                self._held.append(job)  # another kind of query: the next batch
                continue
            jobs.append(job)
        return jobs

    @staticmethod
    def _do_call(job: _Call) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.fn(*job.args))
        except BaseException as exc:
            job.future.set_exception(exc)

    def _run(self) -> None:
        while True:
            while self._deferred:
                self._do_call(self._deferred.pop(0))
            if self._held:
                self._run_batch(self._collect(self._held.pop(0)))
                continue
            first = self._queue.get()
            if first is None:
                return
            if isinstance(first, _Call):
                self._do_call(first)
                continue
            self._run_batch(self._collect(first))

    def _run_batch(self, jobs: list[_Job]) -> None:
        self.batches += 1  # counted before any waiter wakes, so a client sees its own query counted
        self.items += len(jobs)
        try:
            own, bound = jobs[0].fn, self.fn
            if own is not None:
                rows = own([j.item for j in jobs])
            elif bound is not None:
                rows = bound(np.stack([j.item for j in jobs]))
            else:
                raise RuntimeError(f"{self.name}: no batch function bound yet")
            for job, row in zip(jobs, rows, strict=True):
                _resolve(job, row, None)
        except BaseException as exc:  # hand the failure to every waiting request
            logger.exception("batch of %d failed in %s", len(jobs), self.name)
            for job in jobs:
                _resolve(job, None, exc)
