"""Safe logs (no forged lines, no logging errors) and a bad CSV row costing only itself."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

from core.config import PROJECT_ROOT
from utils.atomic import read_json
from utils.logging_setup import setup_logging


def test_control_characters_in_a_path_stay_on_one_log_line(guarded, tmp_path):
    setup_logging(tmp_path / "logs", "api.log")
    log = tmp_path / "logs" / "api.log"
    try:
        with guarded.client() as client:
            client.get("/general/products/x%0a2026-01-01 00:00:00 INFO forged: admin logged in%0d%1b[31m")
        deadline = time.monotonic() + 5  # the access line is written once the response has gone out
        while "forged" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for handler in list(logging.getLogger().handlers):
            if getattr(handler, "_imagesearch", False):
                logging.getLogger().removeHandler(handler)
                handler.close()
    lines = (tmp_path / "logs" / "api.log").read_text().splitlines()
    access = [line for line in lines if "forged" in line]
    assert len(access) == 1 and "\\x0a" in access[0] and "\x1b" not in access[0]
    assert not any(line.startswith("2026-01-01") for line in lines)


def _csv(root, body: bytes) -> None:
    folder = root / "data" / "shop"
    folder.mkdir(parents=True)
    (folder / "products.csv").write_bytes(body)


def test_bad_rows_cost_only_themselves(make_settings):
    from core.model_config import ModelRegistry
    from pipeline.base import PipelineContext
    from pipeline.validation import ValidationPhase

    settings = make_settings()
    refs = "|".join(f"r{i}.jpg" for i in range(10_000))
    _csv(settings.root, (
        "id,title,images\nG1,Good one,a.jpg\n"
        f"G2,Huge,\"{'x' * 1_000_000}\"\n"
        f"G3,Many,\"{refs}\"\n"
        "G4,Bad \xe9\n,b.jpg\n"
        "G5,Good two,c.jpg\n").encode()
        .replace(b"Bad \xc3\xa9\n", b"Bad \xff\xfe\x1b[2J") + "G6,Caf\u00e9,d.jpg\n".encode())
    spec = ModelRegistry.discover(settings).get("shop")
    ctx = PipelineContext(settings=settings, spec=spec, progress=False)
    result = ValidationPhase().run(ctx)
    report = read_json(ctx.paths.models / "validation_report.json")
    rejected = {r["row"]: r["reason"] for r in report["rejected"]}
    assert rejected == {3: "cell too large", 4: "cell too large", 5: "non-UTF-8 bytes"}
    ids = [p.id for chunk in ctx.state().staged() for p in chunk]
    ctx.close()
    assert ids == ["G1", "G5", "G6"] and result.ok == 3


def test_a_binary_csv_is_one_clean_error(tmp_path):
    root = tmp_path / "root"
    _csv(root, bytes(range(256)) * 40)
    proc = subprocess.run([sys.executable, "run_pipeline.py", "--mode", "data"], cwd=PROJECT_ROOT, timeout=120,
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "IMAGESEARCH_ROOT": str(root),
                                                               "HF_HUB_OFFLINE": "1"})
    assert "Logging error" not in proc.stderr and "Traceback" not in proc.stderr
    assert "missing required column" in (root / "logs" / "pipeline.log").read_text()
