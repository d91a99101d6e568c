"""Start the Streamlit shopper UI (ui/app.py); it finds the API through IMAGESEARCH_API_URL."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def upload_limit_mb(max_upload_bytes: int) -> int:
    """Streamlit's ``server.maxUploadSize`` (whole MB) for the API's byte limit: the uploader states the
    same figure the API enforces (the page refuses anything over the exact byte count itself)."""
    return max(1, math.ceil(max_upload_bytes / 1_000_000))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8501, help="port to serve the UI on (default 8501)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--api-url", help="API base URL (default: $IMAGESEARCH_API_URL or http://127.0.0.1:8000)")
    args = parser.parse_args(argv)
    from core.config import load_settings
    from core.errors import ConfigError

    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    env = dict(os.environ)
    # the shop holds no admin key: admin pages ask the visitor for it (ui/admin_gate.py)
    env.pop("IMAGESEARCH_API_KEY", None)
    env["IMAGESEARCH_API_URL"] = args.api_url or settings.api_url
    env["IMAGESEARCH_MAX_UPLOAD_BYTES"] = str(settings.max_upload_bytes)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "streamlit", "run", str(ROOT / "ui" / "app.py"),
               "--server.port", str(args.port), "--server.address", args.host, "--server.headless", "true",
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
               "--server.maxUploadSize", str(upload_limit_mb(settings.max_upload_bytes)),
               "--client.toolbarMode", "viewer", "--theme.base", "light", "--theme.primaryColor", "#35508a"]
    # exec, not a child process: signals (Ctrl-C, a test's terminate) reach Streamlit itself
    os.execve(sys.executable, command, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
