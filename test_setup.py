"""Check this machine before the first build: python test_setup.py [--json] [--api-port N] [--ui-port N].

Prints one line per check (OK / WARN / FAIL, and what to do when not OK); exits 1 when a check FAILs.
"""

from __future__ import annotations

import argparse
import json
import sys

MIN_PYTHON = (3, 11)  # core.setup_check.MIN_PYTHON; checked here first, before any import needs it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check the installation before the first build: Python and packages, torch's device, each "
                    "model's CLIP backbone, the folders, products.csv and build state, ports, admin key and stores.")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--api-port", type=int, help="the API's port (default: the port of IMAGESEARCH_API_URL, 8000)")
    parser.add_argument("--ui-port", type=int, help="the shop page's port (default 8501)")
    args = parser.parse_args(argv)
    if sys.version_info < MIN_PYTHON:  # the project's code does not even parse there: report and stop
        need = ".".join(map(str, MIN_PYTHON))
        found = ".".join(map(str, sys.version_info[:3]))
        detail = f"{found} ({sys.executable}); this project needs {need} or newer"
        fix = f"install Python {need} and run the install command with it"
        print(json.dumps({"ok": False, "checks": [{"check": "python", "status": "FAIL", "detail": detail,
                                                    "fix": fix}]}) if args.json else f"FAIL  python: {detail} -> {fix}")
        return 1
    from pipeline.setup_check import run_setup_check

    report = run_setup_check(api_port=args.api_port, ui_port=args.ui_port)
    print(report.json() if args.json else report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
