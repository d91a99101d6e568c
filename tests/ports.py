"""Ports on 127.0.0.1 for what the tests start later (``run_api.py``, a Milvus server, Streamlit) or keep closed.

A port asked of the OS (a bind to port 0, then closed) and handed to a process that binds it seconds later can
be taken in between by any other test process's own port-0 bind: pytest-xdist runs several workers at once, and
one such collision sent a worker's ``run_api.py`` health check to another worker's image server. So these ports
come from below the OS's ephemeral range, which port-0 binds draw from, each test process from a block of its
own that it claims for as long as it runs (a lock file held open: other test sessions on the machine, run
side by side, claim other blocks), each port once before the block wraps round (a just-closed one may still be
in TIME_WAIT). Below Ray's worker ports start (10002-19999 by default) and the Milvus wrapper's (from 40000)
nothing else of the suite's asks for these."""

from __future__ import annotations

import fcntl
import itertools
import socket
import tempfile
from pathlib import Path
from typing import IO

_FIRST, _END, _BLOCK = 20000, 32000, 250  # Linux's ephemeral range starts at 32768
_claimed: tuple[IO[str], int] | None = None  # this process's block: its lock file (kept open) and first port
_taken = itertools.count()


def _block() -> int:
    """The first port of this process's block, claimed on first use."""
    global _claimed
    if _claimed is None:
        folder = Path(tempfile.gettempdir()) / "imagesearch-test-ports"
        folder.mkdir(exist_ok=True)
        for first in range(_FIRST, _END, _BLOCK):
            lock = open(folder / f"{first}.lock", "w")  # noqa: SIM115 - held open while this process lives
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # another test process's
                lock.close()
                continue
            _claimed = (lock, first)
            break
        else:
            raise RuntimeError(f"every block of test ports in {_FIRST}-{_END - 1} is held by a running test process")
    return _claimed[1]


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now and that no other test process will be given."""
    first = _block()
    for _ in range(_BLOCK):
        port = first + next(_taken) % _BLOCK
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # something outside the suite has it
                continue
        return port
    raise RuntimeError(f"no free port in {first}-{first + _BLOCK - 1} on 127.0.0.1")
