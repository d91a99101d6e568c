"""The extraction phase's preprocessing pool: worker processes give the pixels the encoder gives in-process,
batches come back in order with their tags, and a bad cached copy is left out with its reason; the process that
embeds reuses the memory a pass frees, and a forked worker does not hold on to it."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.encoder import ClipEncoder
from core.types import Precision
from pipeline.preprocess import Preprocessor
from tests.fake_images import jpeg_bytes
from utils.images import ShapePolicy

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def encoder(tiny_clip):
    return ClipEncoder(str(tiny_clip), precision=Precision.FP32, threads=1)


@pytest.mark.parametrize(("processes", "arena"), [(True, 3), (True, 0), (False, 0)],
                         ids=["processes-shared-memory", "processes-pipe", "threads"])
def test_batches_come_back_in_order_and_a_bad_copy_is_left_out_with_its_reason(encoder, tmp_path, processes, arena):
    """(The shared memory has places for 3 images a batch: the second batch's last two come through the pipe.)"""
    good = []
    for i in range(7):
        good.append(tmp_path / f"{i}.jpg")
        good[-1].write_bytes(jpeg_bytes(seed=i))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    strip = tmp_path / "strip.jpg"  # a copy cached before the shape policy: 30:1
    strip.write_bytes(jpeg_bytes(600, 20, seed=9))
    items = [(p.name, p) for p in good]
    batches = [(items[:3] + [("broken.jpg", tmp_path / "broken.jpg")], "first"),
               ([("strip.jpg", strip.read_bytes()), *items[3:]], "second"), ([], "empty")]
    with Preprocessor[str](encoder, 2, policy=ShapePolicy(), processes=processes, batch=arena) as pre:
        out = list(pre.map(batches))
    assert [tag for _, tag in out] == ["first", "second", "empty"]
    first, second, empty = (batch for batch, _ in out)
    assert first.keys == ["0.jpg", "1.jpg", "2.jpg"] and second.keys == [f"{i}.jpg" for i in range(3, 7)]
    assert [(k, reason) for k, reason, _ in first.failed] == [("broken.jpg", "unreadable cached image")]
    assert [(k, reason) for k, reason, _ in second.failed] == [("strip.jpg", "extreme aspect ratio")]
    assert empty.keys == [] and empty.staged is None
    expected = encoder.encode_pixels([encoder.load_pixels(p) for p in good])
    got = np.concatenate([encoder.encode_staged(b.staged) for b in (first, second) if b.staged is not None])
    assert np.allclose(got, expected, atol=1e-6)


_GLIBC = platform.libc_ver()[0] == "glibc"
_A_PASS = """
import os, resource, sys
import numpy as np
from pipeline.preprocess import keep_freed_memory, process_pool

def forward_pass():  # like a model's: 60 MB of activations alive together, all freed at the end
    live = [np.ones(3 << 20, np.uint8) for _ in range(20)]
    del live
"""
_PAGES = (60 << 20) // 4096


def _run(script: str, *args: str) -> float:
    """What ``_A_PASS`` + ``script`` prints, run in a fresh process (an allocator no test has used yet)."""
    done = subprocess.run([sys.executable, "-c", _A_PASS + script, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=True)
    return float(done.stdout.strip())


_REPEATED = """
if sys.argv[1] == "keep":
    assert keep_freed_memory()
forward_pass()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    forward_pass()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


@pytest.mark.skipif(not _GLIBC, reason="glibc's allocator thresholds only")
def test_the_embedding_process_reuses_what_a_pass_frees_instead_of_faulting_it_in_again():
    """60 MB of activations a pass: by default glibc hands them back to the kernel and every later pass faults all
    15,360 pages in again; in a process that embeds (``keep_freed_memory``, which ``Preprocessor`` calls), later
    passes reuse them."""
    assert _run(_REPEATED, "default") > _PAGES / 2  # the control: what a pass costs without it
    assert _run(_REPEATED, "keep") < _PAGES / 20


_FORKED = """
assert keep_freed_memory()
forward_pass()  # its 60 MB freed, and kept by this process

def resident_mb(pid):
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024

pool = process_pool(1)
print(resident_mb(os.getpid()) - resident_mb(pool.submit(os.getpid).result()))
pool.shutdown()
"""


@pytest.mark.skipif(not _GLIBC or not Path("/proc/self/status").exists(), reason="glibc and Linux's /proc only")
def test_a_forked_worker_gives_up_the_memory_its_parent_keeps_free():
    """A worker forked after a pass hands back its copy of the heap the parent keeps free: else that memory stays
    shared, and the parent's next pass copies every page of it as it writes there (measured: its first pass after
    the fork 10-25% more CPU than the next)."""
    assert _run(_FORKED) > 50  # the worker's resident memory lacks the pass's 60 MB
