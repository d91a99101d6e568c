"""Logging for the CLIs and the API: a rotating file under logs/ plus concise console output."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path
from typing import Any

from utils.redact import escape_control, redact_text

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class SafeFormatter(logging.Formatter):
    """One record, one line: control characters and undecodable bytes in the message are escaped and URL
    credentials replaced, whatever a client or a CSV put there (a traceback below it stays multi-line, its
    credentials replaced too)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape_control(redact_text(record.message))
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return redact_text(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return redact_text(super().formatStack(stack_info))


def setup_logging(logs_dir: Path, *filenames: str, level: int = logging.INFO,
                  console_level: int = logging.WARNING) -> None:
    """Send records to each ``logs_dir/<filename>`` (rotating, 5 x 5 MB) and warnings to stderr."""
    logs_dir = Path(logs_dir)
    logs_dir.mkdir(parents=True, exist_ok=True)
    # A log file that cannot be written (a full disk) must not print tracebacks over the one-line error
    # the program gives; the record is lost, the program goes on.
    logging.raiseExceptions = False
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        if getattr(handler, "_imagesearch", False):
            root.removeHandler(handler)
            handler.close()
    handlers: list[logging.Handler] = []
    for name in filenames:
        fh = logging.handlers.RotatingFileHandler(logs_dir / name, maxBytes=5_000_000, backupCount=5,
                                                  encoding="utf-8")
        fh.setLevel(level)
        handlers.append(fh)
    console = logging.StreamHandler()
    console.setLevel(console_level)
    handlers.append(console)
    for handler in handlers:
        handler.setFormatter(SafeFormatter(_FORMAT))
        handler._imagesearch = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    for noisy in ("urllib3", "PIL", "httpx", "httpcore", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
