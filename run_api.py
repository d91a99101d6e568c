"""Start the search API: python run_api.py [--host H] [--port P]."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the multi-model image search API (docs at /docs).")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    args = parser.parse_args(argv)

    from api.app import create_app
    from api.server import serve
    from core.config import load_settings
    from core.errors import ImageSearchError
    from utils.logging_setup import setup_logging

    try:
        settings = load_settings()
        setup_logging(settings.logs_dir, "api.log")
        app = create_app(settings)
        # uvicorn's records go to our handlers (logs/api.log); we write the access log
        serve(app, settings, args.host, args.port)
    except ImageSearchError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from utils.redact import redact_console

    redact_console()  # whatever it prints, no URL credentials (utils/redact.py)
    sys.exit(main())
