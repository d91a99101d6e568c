"""Ports on 127.0.0.1 for what the tests start later (``run_api.py``, a Milvus server, Streamlit) or keep closed.

A port asked of the OS (a bind to port 0, then closed) and handed to a process that binds it seconds later can
be taken in between by any other test worker's own port-0 bind: pytest-xdist runs several workers at once, and
one such collision sent a worker's ``run_api.py`` health check to another worker's image server. So these ports
come from below the OS's ephemeral range, which port-0 binds draw from, each xdist worker from a block of its
own, each port once per run (a just-closed one may still be in TIME_WAIT). Below Ray's worker ports start
(10002-19999 by default) and the Milvus wrapper's (from 40000) nothing else of the suite's asks for these."""

from __future__ import annotations

import itertools
import os
import socket

_FIRST, _BLOCK, _BLOCKS = 20000, 1500, 8  # ports 20000-31999; Linux's ephemeral range starts at 32768
_taken = itertools.count()


def _worker() -> int:
    """This xdist worker's number (``gw3`` is 3); 0 when the suite runs in one process."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name[2:]) % _BLOCKS if name[2:].isdigit() else 0


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now and that no other test worker will be given."""
    first = _FIRST + _worker() * _BLOCK
    for _ in range(_BLOCK):
        port = first + next(_taken) % _BLOCK
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # something outside the suite has it
                continue
        return port
    raise RuntimeError(f"no free port in {first}-{first + _BLOCK - 1} on 127.0.0.1")
