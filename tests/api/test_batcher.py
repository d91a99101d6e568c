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


def test_calls_run_on_the_worker_thread_between_batches():
    batcher = MicroBatcher(lambda b: b, name="t")
    batcher.start()
    try:
        worker = batcher.call(threading.get_ident).result(5)
        assert worker != threading.get_ident()
        assert _run(batcher.run(threading.get_ident)) == worker
        with pytest.raises(ZeroDivisionError):
            batcher.call(lambda: 1 / 0).result(5)
        assert _run(batcher.submit(np.ones(1, dtype=np.float32))).tolist() == [1.0]
    finally:
        batcher.stop()


def test_texts_and_images_batch_separately_each_kind_together():
    import asyncio
    import time

    import numpy as np

    from api.batcher import MicroBatcher

    calls: list[tuple[str, int]] = []

    def images(stacked):
        calls.append(("image", len(stacked)))
        return stacked * 2

    def texts(items):
        calls.append(("text", len(items)))
        return np.array([[len(t)] for t in items], dtype=np.float32)

    batcher = MicroBatcher(images, name="mixed", max_batch=16, max_wait_ms=5)
    batcher.start()

    async def burst():
        block = asyncio.get_running_loop().run_in_executor(None, lambda: batcher.call(time.sleep, 0.2).result())
        await asyncio.sleep(0.05)  # the worker is busy: the burst queues up behind it
        jobs = [batcher.submit(f"t{'x' * i}", texts) for i in range(6)] + \
               [batcher.submit(np.full(2, i, dtype=np.float32)) for i in range(3)]
        out = await asyncio.gather(*jobs)
        await block
        return out

    try:
        out = asyncio.run(burst())
    finally:
        batcher.stop()
    assert [float(o[0]) for o in out[:6]] == [float(len(f"t{'x' * i}")) for i in range(6)]
    assert [float(o[0]) for o in out[6:]] == [0.0, 2.0, 4.0]
    assert sorted(calls) == [("image", 3), ("text", 6)]
