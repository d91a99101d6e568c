"""Run a CLI in a pseudo-terminal, as a merchant does, and read the screen it leaves (pyte emulates the
terminal: carriage returns, cursor moves and erased lines land where a real terminal puts them)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

COLUMNS, ROWS = 400, 400  # wide enough that no line wraps, tall enough that nothing scrolls away


@dataclass
class Terminal:
    """What a run left: its exit status, the raw bytes written, and the screen's lines (trailing blanks cut)."""

    returncode: int
    raw: str
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _screen(raw: str) -> list[str]:
    import pyte

    screen = pyte.Screen(COLUMNS, ROWS)
    stream = pyte.Stream(screen)
    stream.feed(raw.replace("\n", "\r\n"))  # the tty's onlcr, which pty output bypasses here
    lines = [line.rstrip() for line in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def run(args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 240) -> Terminal:
    """``python <args>`` with stdin, stdout and stderr on one pseudo-terminal of COLUMNS x ROWS."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.ONLCR  # keep "\n" as written; _screen adds the carriage return
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    proc = subprocess.Popen([sys.executable, *args], stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
                            close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"{args} still running after {timeout:.0f}s")
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(timeout=30)
    finally:
        os.close(master)
    raw = b"".join(chunks).decode("utf-8", errors="replace")
    return Terminal(returncode=proc.returncode, raw=raw, lines=_screen(raw))
