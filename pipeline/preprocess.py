"""Image work on every core: the extraction phase's one preprocessing path (local executor and Ray's
embedding actors alike) and the process pool the download phase decodes in.

Each cached image is decoded (a JPEG at the smallest DCT scale that covers the model's input),
centre-cropped and, on a CPU, resized once, in chunks, by a pool of worker processes sized to the
machine: decoding is GIL-free in PIL, but the Python around it is not, and on a many-core GPU server
threads stall on the GIL (measured: 16 threads 1.5x one). A chunk's uint8 pixels come back pickled
(workers use numpy and PIL only), and a staging thread stacks each batch into (pinned, on CUDA)
memory, so the model's thread only launches the copy and the forward pass.
``Preprocessor.map`` keeps at most ``ahead`` batches in flight beyond the one being embedded: memory
stays bounded whatever the catalogue's size. Where a process cannot fork (or inside a Ray actor), the
same chunks run on threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import math
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np

from utils.images import ImageDecodeError, ShapePolicy

if TYPE_CHECKING:
    from core.encoder import ClipEncoder, Staged, View

Item = tuple[str, Path | bytes]  # (key, the image file or its bytes)
T = TypeVar("T")
_PR_SET_PDEATHSIG = 1  # prctl option (Linux): a signal for this process when its parent thread ends
_CHUNK = 32  # images per task: enough to amortise a task's overhead, few enough to spread a batch out


def worker_count(setting: int) -> int:
    """Preprocessing workers: the setting, or one per core this process may run on."""
    return setting or len(os.sched_getaffinity(0))


def process_pool(workers: int) -> Executor:
    """``workers`` forked processes (they share the parent's imports and start in milliseconds), or threads
    where this platform cannot fork. The workers start here, from the calling thread, and end with it."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_tied_to, initargs=(os.getpid(),))
    pool.submit(int).result()  # forks every worker now (a pool forks them all on its first task)
    return pool


def _tied_to(parent: int) -> None:
    """A worker's start: it is killed when the thread that forked it ends, even by kill -9, so nothing it
    inherited (the model's build lock, above all) outlives the build."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the build died before the line above
        os._exit(1)


Failure = tuple[str, str, str]  # (key, reason label for the report, message)


@dataclass
class Prepared:
    """One batch, preprocessed: the keys that decoded (in order), their staged pixels, and the keys that did
    not, each with why."""

    keys: list[str] = field(default_factory=list)
    staged: Staged | None = None
    failed: list[Failure] = field(default_factory=list)


@dataclass
class _Chunk:
    keys: list[str]
    pixels: list[np.ndarray]
    failed: list[Failure]


def load_chunk(view: View, policy: ShapePolicy | None, items: Sequence[Item]) -> _Chunk:
    """Runs in a worker: each item's uint8 pixels (numpy and PIL only: a forked child of a process holding torch
    must not touch torch). An image that breaks ``policy`` (a copy cached before it) or does not decode is left
    out, with the reason."""
    out = _Chunk([], [], [])
    for key, source in items:
        try:
            out.pixels.append(view.load(io.BytesIO(source) if isinstance(source, bytes) else source, policy))
        except ImageDecodeError as exc:
            out.failed.append((key, exc.reason, str(exc)))
        except Exception as exc:  # a damaged cache file is reported and left out; the rest goes on
            out.failed.append((key, "unreadable cached image", str(exc) or type(exc).__name__))
        else:
            out.keys.append(key)
    return out


class Preprocessor(Generic[T]):
    """A pool of ``workers`` preprocessing processes (threads when ``processes`` is false) for one encoder; use
    as a context manager."""

    def __init__(self, encoder: ClipEncoder, workers: int, *, policy: ShapePolicy | None = None, ahead: int = 2,
                 processes: bool = True) -> None:
        self.encoder, self.view, self.policy = encoder, encoder.view, policy
        self.workers, self.ahead = max(1, workers), ahead
        self._pool = process_pool(self.workers) if processes else ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="preprocess")
        self._stager = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stage")

    def __enter__(self) -> Preprocessor[T]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for pool in (self._pool, self._stager):
            pool.shutdown(wait=True, cancel_futures=True)

    def batch(self, items: Sequence[Item]) -> Prepared:
        """One batch, preprocessed on the pool."""
        return self._submit(items).result()

    def map(self, batches: Iterable[tuple[Sequence[Item], T]]) -> Iterator[tuple[Prepared, T]]:
        """Each batch preprocessed, in order, with the tag it came with; at most ``ahead`` batches ahead of the
        consumer."""
        pending: deque[tuple[Future[Prepared], T]] = deque()
        for items, tag in batches:
            pending.append((self._submit(items), tag))
            if len(pending) > self.ahead:
                future, tag_out = pending.popleft()
                yield future.result(), tag_out
        while pending:
            future, tag_out = pending.popleft()
            yield future.result(), tag_out

    def _submit(self, items: Sequence[Item]) -> Future[Prepared]:
        size = max(1, min(_CHUNK, math.ceil(len(items) / self.workers)))  # every worker gets a share of a batch
        chunks = [self._pool.submit(load_chunk, self.view, self.policy, items[i:i + size])
                  for i in range(0, len(items), size)]
        return self._stager.submit(self._gather, chunks)

    def _gather(self, chunks: list[Future[_Chunk]]) -> Prepared:
        done = [future.result() for future in chunks]
        out = Prepared(keys=[k for c in done for k in c.keys], failed=[f for c in done for f in c.failed])
        if out.keys:
            out.staged = self.encoder.stage([p for c in done for p in c.pixels])
        return out
