"""Take the README's UI screenshots from the real app: demo build, real API, Streamlit, system chromium."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core.config import load_settings  # noqa: E402
from core.model_config import ModelRegistry  # noqa: E402
from pipeline.runner import run_model  # noqa: E402
from utils.demo_catalogue import write_demo  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(script: str, port: int, env: dict, cwd: Path) -> subprocess.Popen:
    args = [sys.executable, str(ROOT / script), "--port", str(port), "--host", "127.0.0.1"]
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait(url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not come up")


def _build(root: Path, clip: str) -> None:
    write_demo(root / "data")
    settings = load_settings(root=root, clip_model=clip, device="cpu")
    registry = ModelRegistry.discover(settings)
    for name in ("general", "shirts"):
        run_model(settings, registry.get(name), progress=False)


def _results(page, count: int, grid: str = "") -> None:
    sel = f"[class*=st-key-grid-{grid}] [data-testid=result-card]" if grid else "[data-testid=result-card]"
    page.wait_for_function("([s, n]) => document.querySelectorAll(s).length >= n", arg=[sel, count])
    page.wait_for_timeout(1500)


def _shoot(ui_url: str, root: Path, out: Path, chromium: str) -> None:
    """landing.png, single.png and all.png at desktop size, phone.png at 390x844 (what a phone shows after a
    search)."""
    from playwright.sync_api import sync_playwright

    photo = root / "data" / "general" / "images" / "G1002_0.jpg"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(ui_url)
        page.wait_for_function("() => document.querySelectorAll('[data-testid=category-tile] img').length >= 6")
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out / "landing.png"))
        page.locator("[data-testid=stFileUploader] input[type=file]").set_input_files(str(photo))
        _results(page, 12)
        page.screenshot(path=str(out / "single.png"))
        page.get_by_role("radio", name="All catalogues", exact=True).click()
        _results(page, 12, grid="merged")
        page.screenshot(path=str(out / "all.png"))
        phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
        small = phone.new_page()
        small.set_default_timeout(60_000)
        small.goto(ui_url)
        small.locator("[data-testid=stFileUploader] input[type=file]").set_input_files(str(photo))
        _results(small, 12)
        small.screenshot(path=str(out / "phone.png"))
        browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="folder for the PNGs")
    parser.add_argument("--clip", help="CLIP checkpoint folder (default: a generated tiny CLIP)")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="system chromium binary")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.clip:
            from utils.tiny_clip import write_tiny_clip

            args.clip = str(write_tiny_clip(root / "tiny_clip"))
        _build(root, args.clip)
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESEARCH_")}
        env.update(IMAGESEARCH_ROOT=str(root), IMAGESEARCH_CLIP_MODEL=args.clip, IMAGESEARCH_DEVICE="cpu")
        api_port, ui_port = _free_port(), _free_port()
        procs = [_serve("run_api.py", api_port, env, root),
                 _serve("run_streamlit.py", ui_port, {**env, "IMAGESEARCH_API_URL": f"http://127.0.0.1:{api_port}"},
                        root)]
        try:
            _wait(f"http://127.0.0.1:{api_port}/health")
            _wait(f"http://127.0.0.1:{ui_port}/_stcore/health")
            args.out.mkdir(parents=True, exist_ok=True)
            _shoot(f"http://127.0.0.1:{ui_port}", root, args.out, args.chromium)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=15)
    sys.stdout.write(f"wrote landing.png, single.png, all.png and phone.png in {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
