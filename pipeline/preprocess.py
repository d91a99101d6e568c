"""Image work on every core: the extraction phase's one preprocessing path (local executor and Ray's
embedding actors alike) and the process pool the download phase decodes in.

Each cached image is decoded (a JPEG at the smallest DCT scale that covers the model's input),
centre-cropped and, on a CPU, resized once, in chunks, by a pool of worker processes sized to the
machine: decoding is GIL-free in PIL, but the Python around it is not, and on a many-core GPU server
threads stall on the GIL (measured: 16 threads 1.5x one). A chunk's uint8 pixels come back pickled
(workers use numpy and PIL only) or, in worker processes, through an arena of shared memory mapped before
they fork: each batch in flight has a slot there that its workers write the pixels into, so the build process
copies each image once (a pipe would cost it a read, an unpickle and that copy, all holding the GIL: the cap on
how fast one build process feeds a GPU). A staging thread stacks each batch into (pinned, on CUDA) memory, so
the model's thread only launches the copy and the forward pass.
``Preprocessor.map`` keeps at most ``ahead`` batches in flight beyond the one being embedded: memory
stays bounded whatever the catalogue's size. Where a process cannot fork (or inside a Ray actor), the
same chunks run on threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import math
import mmap
import multiprocessing
import os
import queue
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
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


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def process_pool(workers: int, arena: mmap.mmap | None = None) -> Executor:
    """``workers`` forked processes (they share the parent's imports and start in milliseconds), or threads
    where this platform cannot fork. The workers start here, from the calling thread, and end with it; they
    write pixels into ``arena`` (shared memory mapped before they fork) where a task gives them a place."""
    if not can_fork():
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_tied_to, initargs=(os.getpid(), arena))
    pool.submit(int).result()  # forks every worker now (a pool forks them all on its first task)
    return pool


_worker_arena: mmap.mmap | None = None  # in a worker process: the arena its pool was forked with

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_KEEP_FREED = 1 << 30  # bytes freed at the top of the heap that glibc keeps instead of handing back
_MMAP_ABOVE = 32 << 20  # blocks at least this large get their own mapping (glibc's largest threshold on 64 bits)


def keep_freed_memory() -> bool:
    """In the process that embeds: glibc keeps the memory a forward pass frees (activations, the normalised batch)
    for the next pass, instead of handing it back to the kernel and faulting every page in again. Its default
    thresholds adapt to the heap's history, so a process could pay that every pass or never: on 2 cores, ViT-B/32,
    batch 32, passes paying 65,000-77,000 page faults took 1.71-1.75 s of CPU against 1.54-1.59 s without.
    Memory a pass frees stays the process's until it ends (at most ``_KEEP_FREED`` at the heap's top). False where
    the C library has no ``mallopt`` (not glibc)."""
    mallopt = _libc("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED)) and bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_ABOVE))


def _libc(name: str) -> Callable[..., int] | None:
    """A function of this process's C library (None where it has none by that name)."""
    try:
        return getattr(ctypes.CDLL(None), name)  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def _tied_to(parent: int, arena: mmap.mmap | None = None) -> None:
    """A worker's start: it is killed when the thread that forked it ends, even by kill -9, so nothing it
    inherited (the model's build lock, above all) outlives the build. The arena came with the fork. It hands back
    its copy of the heap its parent keeps free (``keep_freed_memory``): shared, those pages would be copied one by one
    as the parent's next pass writes there (its first pass after the fork took 10-25% more CPU than the next)."""
    global _worker_arena
    _worker_arena = arena
    if (prctl := _libc("prctl")) is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the build died before the line above
        os._exit(1)
    if (malloc_trim := _libc("malloc_trim")) is not None:  # glibc: free pages in every arena back to the kernel
        malloc_trim(0)


class _Arena:
    """Shared memory for the pixels of the batches in flight: ``slots`` slots of ``images`` places of
    ``image_bytes`` each, mapped (anonymous and shared) before the workers fork, so it needs no name and goes
    with the last process that maps it, kill -9 included. A batch without a free slot, an image past a slot's
    places and one larger than a place come back through the pipe instead."""

    def __init__(self, slots: int, images: int, image_bytes: int) -> None:
        self.images, self.image_bytes = images, image_bytes
        self.map = mmap.mmap(-1, slots * images * image_bytes)
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(slots):
            self._free.put(slot)

    def take(self) -> int | None:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return None

    def give_back(self, slot: int) -> None:
        self._free.put(slot)

    def place(self, slot: int | None, index: int) -> int | None:
        """The byte offset of a batch's ``index``-th image in ``slot`` (None: it has no place there)."""
        if slot is None or index >= self.images:
            return None
        return (slot * self.images + index) * self.image_bytes

    def pixels(self, offset: int, shape: tuple[int, ...]) -> np.ndarray:
        return np.frombuffer(self.map, dtype=np.uint8, count=math.prod(shape), offset=offset).reshape(shape)

    def close(self) -> None:
        with contextlib.suppress(BufferError):  # a view still held: the map goes when it does
            self.map.close()


def _arena(slots: int, batch: int, image_bytes: int) -> _Arena | None:
    """An arena with a place for each image of ``slots`` batches, within ``_ARENA_MAX`` bytes (past that, a batch's
    last images come through the pipe); None without a batch size."""
    images = min(batch, _ARENA_MAX // (slots * image_bytes))
    return _Arena(slots, images, image_bytes) if images > 0 else None


_ARENA_MAX = 2 << 30  # bytes of shared memory at most (4 slots of 256 GPU views of 448 px: 616 MB)


def _image_bytes(view: View) -> int:
    """A place in the arena: the crop on a host that resizes; else the square at its decoded size, which JPEG
    draft decoding keeps under twice the model's input side."""
    side = view.crop if view.resize else 2 * max(view.size, view.crop)
    return side * side * 3


Failure = tuple[str, str, str]  # (key, reason label for the report, message)


@dataclass
class Prepared:
    """One batch, preprocessed: the keys that decoded (in order), their staged pixels, and the keys that did
    not, each with why."""

    keys: list[str] = field(default_factory=list)
    staged: Staged | None = None
    failed: list[Failure] = field(default_factory=list)


Placed = tuple[int, tuple[int, ...]]  # pixels written into the arena: (byte offset, shape)


@dataclass
class _Chunk:
    keys: list[str]
    pixels: list[np.ndarray | Placed]
    failed: list[Failure]


def load_chunk(view: View, policy: ShapePolicy | None, items: Sequence[Item],
               places: Sequence[int | None] = (), image_bytes: int = 0) -> _Chunk:
    """Runs in a worker: each item's uint8 pixels (numpy and PIL only: a forked child of a process holding torch
    must not touch torch), written into the arena where ``places`` gives the item a place it fits. An image that
    breaks ``policy`` (a copy cached before it) or does not decode is left out, with the reason."""
    out = _Chunk([], [], [])
    for i, (key, source) in enumerate(items):
        try:
            pixels = view.load(io.BytesIO(source) if isinstance(source, bytes) else source, policy)
        except ImageDecodeError as exc:
            out.failed.append((key, exc.reason, str(exc)))
        except Exception as exc:  # a damaged cache file is reported and left out; the rest goes on
            out.failed.append((key, "unreadable cached image", str(exc) or type(exc).__name__))
        else:
            out.keys.append(key)
            out.pixels.append(_placed(pixels, places[i] if i < len(places) else None, image_bytes))
    return out


def _placed(pixels: np.ndarray, offset: int | None, image_bytes: int) -> np.ndarray | Placed:
    if offset is None or _worker_arena is None or pixels.nbytes > image_bytes:
        return pixels
    np.frombuffer(_worker_arena, dtype=np.uint8, count=pixels.size, offset=offset)[:] = pixels.reshape(-1)
    return offset, pixels.shape


class Preprocessor(Generic[T]):
    """A pool of ``workers`` preprocessing processes (threads when ``processes`` is false) for one encoder; use
    as a context manager."""

    def __init__(self, encoder: ClipEncoder, workers: int, *, policy: ShapePolicy | None = None, ahead: int = 2,
                 processes: bool = True, batch: int = 0) -> None:
        self.encoder, self.view, self.policy = encoder, encoder.view, policy
        self.workers, self.ahead = max(1, workers), ahead
        keep_freed_memory()  # this process embeds what the pool prepares
        # a slot for each batch ``map`` keeps in flight and one being staged; ``batch`` (the images a batch holds
        # at most) sizes them, 0: no arena
        self._arena = _arena(ahead + 2, batch, _image_bytes(self.view)) if processes and can_fork() else None
        self._pool = process_pool(self.workers, self._arena.map if self._arena else None) if processes else \
            ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="preprocess")
        self._stager = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stage")

    def __enter__(self) -> Preprocessor[T]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for pool in (self._pool, self._stager):
            pool.shutdown(wait=True, cancel_futures=True)
        if self._arena is not None:
            self._arena.close()

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
        arena = self._arena
        slot = arena.take() if arena is not None and items else None
        chunks = []
        for i in range(0, len(items), size):
            part = items[i:i + size]
            places = [arena.place(slot, i + j) for j in range(len(part))] if arena is not None else []
            chunks.append(self._pool.submit(load_chunk, self.view, self.policy, part, places,
                                            arena.image_bytes if arena is not None else 0))
        return self._stager.submit(self._gather, chunks, slot)

    def _gather(self, chunks: list[Future[_Chunk]], slot: int | None) -> Prepared:
        try:
            done = [future.result() for future in chunks]
            out = Prepared(keys=[k for c in done for k in c.keys], failed=[f for c in done for f in c.failed])
            if out.keys:
                out.staged = self.encoder.stage([self._pixels(p) for c in done for p in c.pixels])  # copied out
            return out
        finally:
            if slot is not None and self._arena is not None:
                wait(chunks)  # no worker still writes into the slot (after an error, too)
                self._arena.give_back(slot)

    def _pixels(self, pixels: np.ndarray | Placed) -> np.ndarray:
        if isinstance(pixels, np.ndarray):
            return pixels
        assert self._arena is not None, "pixels placed in an arena this pool does not have"
        return self._arena.pixels(*pixels)
