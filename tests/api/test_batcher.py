"""The micro-batcher on its own: concurrent items share a call, failures reach every waiter, a full queue is 503."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from api.batcher import MicroBatcher
from core.errors import OverloadedError


def _run(coro):
    return asyncio.run(coro)


def test_concurrent_submissions_share_one_call():
    calls = []

    def double(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        time.sleep(0.02)
        return batch * 2

    batcher = MicroBatcher(double, name="t", max_batch=8, max_wait_ms=5)
    batcher.start()

    async def main():
        return await asyncio.gather(*(batcher.submit(np.full(3, i, dtype=np.float32)) for i in range(20)))

    try:
        out = _run(main())
    finally:
        batcher.stop()
    assert [float(o[0]) for o in out] == [2.0 * i for i in range(20)]
    assert sum(calls) == 20 and max(calls) == 8 and len(calls) < 20


def test_a_lone_item_does_not_wait():
    batcher = MicroBatcher(lambda b: b, name="t", max_wait_ms=500)
    batcher.start()
    try:
        start = time.perf_counter()
        _run(batcher.submit(np.zeros(2, dtype=np.float32)))
        assert time.perf_counter() - start < 0.2
    finally:
        batcher.stop()


def test_failure_reaches_every_waiter_and_the_worker_survives():
    fail = threading.Event()
    fail.set()

    def fn(batch):
        if fail.is_set():
            fail.clear()
            raise RuntimeError("boom")
        return batch

    batcher = MicroBatcher(fn, name="t")
    batcher.start()
    try:
        with pytest.raises(RuntimeError):
            _run(batcher.submit(np.zeros(2, dtype=np.float32)))
        assert _run(batcher.submit(np.ones(2, dtype=np.float32))).tolist() == [1.0, 1.0]
    finally:
        batcher.stop()


def test_full_queue_is_overloaded():
    batcher = MicroBatcher(lambda b: b, name="t", max_queue=1)  # not started: nothing drains the queue

    async def main():
        first = asyncio.ensure_future(batcher.submit(np.zeros(1, dtype=np.float32)))
        await asyncio.sleep(0)
        with pytest.raises(OverloadedError):
            await batcher.submit(np.zeros(1, dtype=np.float32))
        first.cancel()

    _run(main())
