"""End to end: real pipeline, real API and the real Streamlit app, driven through Debian's chromium."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from core.config import PROJECT_ROOT, load_settings
from core.model_config import ModelRegistry
from pipeline.runner import PhaseStatus, run_model
from utils.demo_catalogue import write_demo

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TOP_K = 6
WAIT_MS = 30_000


def _chromium() -> str:
    """Debian's chromium (never a downloaded browser build); skip where it is not installed."""
    for path in CHROMIUM_PATHS:
        if Path(path).is_file():
            return path
    found = shutil.which("chromium")
    if found:
        return found
    pytest.skip("Debian chromium is not installed (no /usr/bin/chromium); "
                "`apt-get install -y chromium` enables this test (.ci/run does it)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(args: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} not up after {timeout:.0f}s:\n{log.read_text(errors='replace')[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def chromium_path() -> str:
    return _chromium()


@pytest.fixture(scope="module")
def built_root(chromium_path, tiny_clip, tmp_path_factory) -> Path:
    """The demo catalogue (trimmed) built by the real four-phase pipeline into a temp root."""
    root = tmp_path_factory.mktemp("e2e_root")
    write_demo(root / "data", general_per_category=4, shirts_per_category=3)
    settings = load_settings(root=root, clip_model=str(tiny_clip), device="cpu", torch_threads=1)
    registry = ModelRegistry.discover(settings)
    for name in ("general", "shirts"):
        outcomes = run_model(settings, registry.get(name), progress=False)
        assert all(o.status != PhaseStatus.INCOMPLETE for o in outcomes), outcomes
    # a third catalogue that was dropped in but never built: listed, not searchable
    (root / "data" / "toys").mkdir()
    (root / "data" / "toys" / "products.csv").write_text(
        "shopify_product_id,title,images\nT1,Toy Robot,https://example.invalid/robot.jpg\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def stack(built_root, tiny_clip):
    """``python run_api.py`` and ``python run_streamlit.py`` on free ports, as a user starts them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESEARCH_")}
    env.update(IMAGESEARCH_ROOT=str(built_root), IMAGESEARCH_CLIP_MODEL=str(tiny_clip), IMAGESEARCH_DEVICE="cpu",
               IMAGESEARCH_TORCH_THREADS="1", HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    api_port, ui_port = _free_port(), _free_port()
    api_url, ui_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{ui_port}"
    logs = built_root / "logs"
    logs.mkdir(exist_ok=True)
    api = _start([str(PROJECT_ROOT / "run_api.py"), "--port", str(api_port)], env, built_root, logs / "e2e-api.out")
    ui = _start([str(PROJECT_ROOT / "run_streamlit.py"), "--port", str(ui_port), "--host", "127.0.0.1"],
                {**env, "IMAGESEARCH_API_URL": api_url}, built_root, logs / "e2e-ui.out")
    try:
        _wait_http(f"{api_url}/health", api, logs / "e2e-api.out")
        _wait_http(f"{ui_url}/_stcore/health", ui, logs / "e2e-ui.out")
        yield SimpleNamespace(api=api, ui=ui, api_url=api_url, ui_url=ui_url, root=built_root)
    finally:
        _stop(ui)
        _stop(api)


@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, stack, request):
    """A fresh browser session on the app; its last screen is kept in the temp root's logs/."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    opened.set_default_timeout(WAIT_MS)
    opened.goto(stack.ui_url)
    opened.get_by_text("Visual Product Search").first.wait_for()
    yield opened
    opened.screenshot(path=str(stack.root / "logs" / f"{request.node.name}.png"))
    context.close()


@pytest.fixture(scope="module")
def query_product(built_root) -> SimpleNamespace:
    """A general product with a single photo: searching with that photo must find it first."""
    with (built_root / "data" / "general" / "products.csv").open(newline="", encoding="utf-8") as fh:
        row = next(r for r in csv.DictReader(fh) if len(json.loads(r["images"])) == 1)
    return SimpleNamespace(id=row["shopify_product_id"], title=row["title"],
                           image=built_root / "data" / "general" / row["preview_image"])


# --- page helpers --------------------------------------------------------------------------------

def _idle(page) -> None:
    """Let Streamlit send pending widget values and finish the rerun they start."""
    page.wait_for_timeout(400)
    page.wait_for_function("() => !document.querySelector('[data-testid=stStatusWidget]')")


def _choose(page, label: str) -> None:
    """Click an option of a segmented control (model or query mode)."""
    page.get_by_role("radio", name=label, exact=True).click()
    page.get_by_role("radio", name=label, exact=True).and_(page.locator("[aria-checked=true]")).wait_for()
    _idle(page)


def _set_top_k(page, value: int) -> None:
    slider = page.get_by_test_id("stSlider").filter(has_text="Results").get_by_role("slider")
    slider.focus()
    page.keyboard.press("Home")
    for _ in range(value - 1):
        page.keyboard.press("ArrowRight")
    assert slider.input_value() == str(value)
    _idle(page)


def _upload(page, image: Path) -> None:
    page.locator("[data-testid=stFileUploader] input[type=file]").set_input_files(str(image))


def _cards(page, count: int, first: str | None = None, selector: str = "") -> list[dict]:
    """Wait until exactly ``count`` result cards (under ``selector``) show, ``first`` at rank 1."""
    _idle(page)
    page.wait_for_function(
        """([sel, n, first]) => {
             const cards = [...document.querySelectorAll(sel + '[data-testid=result-card]')];
             return cards.length === n && (!first || cards[0].dataset.productId === first);
           }""", arg=[f"{selector} " if selector else "", count, first])
    return page.eval_on_selector_all(f"{selector} [data-testid=result-card]".strip(),
                                     "els => els.map(e => ({...e.dataset}))")


def _no_traceback(page) -> None:
    assert page.get_by_test_id("stException").count() == 0
    assert "Traceback" not in page.content()


# --- the shopper's journeys ----------------------------------------------------------------------

def test_photo_search_in_one_model_shows_the_product_first(page, query_product):
    _choose(page, "General products")
    _set_top_k(page, TOP_K)
    _upload(page, query_product.image)
    cards = _cards(page, TOP_K, first=query_product.id)
    assert [c["rank"] for c in cards] == [str(n) for n in range(1, TOP_K + 1)]
    assert {c["model"] for c in cards} == {"general"}
    panel = page.get_by_test_id("query-panel")
    assert "Your photo" in panel.text_content() and panel.locator("img").count() == 1
    page.get_by_text(f"{TOP_K} results in").wait_for()  # search time shown after the search
    _no_traceback(page)


def test_all_models_shows_the_merged_ranking_then_each_model(page, query_product):
    _set_top_k(page, TOP_K)
    _upload(page, query_product.image)
    _cards(page, TOP_K, first=query_product.id)
    _choose(page, "All models")
    cards = _cards(page, 3 * TOP_K, first=query_product.id)
    headers = page.eval_on_selector_all("[data-testid=merged-group], [data-testid=model-group]",
                                        "els => els.map(e => [e.dataset.testid, e.dataset.model])")
    assert headers == [["merged-group", "all"], ["model-group", "general"], ["model-group", "shirts"],
                       ["model-group", "toys"]]
    assert "not" in page.get_by_test_id("group-error").text_content().lower()  # toys: not built yet
    merged, general, shirts = cards[:TOP_K], cards[TOP_K:2 * TOP_K], cards[2 * TOP_K:]
    assert [c["rank"] for c in merged] == [str(n) for n in range(1, TOP_K + 1)]
    assert {c["model"] for c in general} == {"general"} and {c["model"] for c in shirts} == {"shirts"}
    assert general[0]["productId"] == query_product.id
    _no_traceback(page)


def test_image_link_search(page, stack, query_product):
    _choose(page, "Image link")
    box = page.get_by_label("Paste an image link")
    box.fill(f"{stack.api_url}/general/products/{query_product.id}/image")
    box.press("Enter")
    _cards(page, 10, first=query_product.id)
    _no_traceback(page)


def test_unbuilt_catalogue_is_listed_but_not_offered(page):
    toys = page.get_by_test_id("model-status").filter(has_text="Toys")
    assert "not built yet" in toys.text_content()
    assert page.get_by_role("radio", name="Toys", exact=True).count() == 0
    assert page.get_by_test_id("api-status").filter(has_text="Degraded").count() == 1


def test_unreadable_image_and_no_match_get_friendly_messages(page, stack, query_product):
    broken = stack.root / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 this is not really a jpeg")
    _upload(page, broken)
    page.get_by_test_id("bad-query").wait_for()
    assert "couldn't read that image" in page.get_by_test_id("bad-query").text_content()
    page.get_by_test_id("stFileUploader").get_by_role("button", name="Remove").first.click()
    _idle(page)
    slider = page.get_by_test_id("stSlider").filter(has_text="Minimum match").get_by_role("slider")
    slider.focus()
    page.keyboard.press("End")  # 100%: only a perfect match would pass
    _idle(page)
    _upload(page, sorted((stack.root / "data" / "shirts" / "images").glob("*.jpg"))[0])  # a shirt in General
    page.get_by_test_id("no-results").wait_for()
    _no_traceback(page)


def test_text_query_and_more_like_this(page):
    _choose(page, "General products")
    _set_top_k(page, TOP_K)
    _choose(page, "Describe it")
    box = page.get_by_label("Describe what you are looking for")
    box.fill("red ceramic mug")
    box.press("Enter")
    page.get_by_test_id("query-panel").filter(has_text="red ceramic mug").wait_for()
    first = _cards(page, TOP_K)[0]
    page.get_by_role("button", name="More like this").first.click()
    page.get_by_test_id("query-panel").filter(has_text="More like").wait_for()
    similar = _cards(page, TOP_K)
    assert first["productId"] not in {c["productId"] for c in similar}  # the product itself is left out
    _no_traceback(page)


def test_api_down_shows_a_clear_message(page, stack, query_product):
    _upload(page, query_product.image)
    _cards(page, 10, first=query_product.id)  # default top-k
    _stop(stack.api)
    page.get_by_role("radio", name="Shirts", exact=True).click()
    alert = page.get_by_test_id("api-down")
    alert.wait_for()
    assert "offline" in alert.text_content() and stack.api_url in alert.text_content()
    assert page.get_by_test_id("api-status").filter(has_text="Offline").count() == 1
    _no_traceback(page)
