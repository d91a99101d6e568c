"""The README's API examples run as pasted (only the port differs) against a real API on the built demo."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

from core.config import PROJECT_ROOT, load_settings
from tests.api.conftest import API_KEY, start_server, stop_server


def _examples() -> str:
    """The README's ```bash block of API examples (the one that searches a demo photo)."""
    blocks = re.findall(r"```bash\n(.*?)```", (PROJECT_ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    return next(b for b in blocks if "curl -F file=@data/general/" in b)


def _bodies(text: str) -> list[dict]:
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        body, at = decoder.raw_decode(text, at)
        found.append(body)
    return found


def test_the_readme_api_examples_run_as_pasted(built_root, tiny_clip, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(built_root / "data", root / "data")
    shutil.copytree(built_root / "models", root / "models")  # the admin example writes: not the shared build
    server = start_server(load_settings(root=root, clip_model=str(tiny_clip), device="cpu", api_key=API_KEY))
    (tmp_path / ".curlrc").write_text("--fail-with-body\n--silent\n--show-error\n")  # a 4xx fails the script
    env = {**os.environ, "CURL_HOME": str(tmp_path), "IMAGESEARCH_API_KEY": API_KEY,
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"}
    script = _examples().replace("http://127.0.0.1:8000", server.url)
    try:
        proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=root, env=env, capture_output=True,
                              text=True, timeout=180)
    finally:
        stop_server(server)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    photo, every, refined, words, vector, admin = _bodies(proc.stdout)
    assert photo["num_results"] == 5 and photo["results"][0]["id"] == "G1034"
    assert every["results"] and {h["category"] for h in every["results"]} == {"sneakers"}
    assert refined["query"] == "red canvas" and refined["num_results"] == 5
    prices = [h["extra"]["price"] for h in words["results"]]
    assert prices and prices == sorted(prices) and max(prices) <= 60
    assert {h["model"] for h in words["results"]} == {"shirts"}
    assert vector["results"] and {h["category"] for h in vector["results"]} == {"mugs"}
    assert admin["action"] == "upserted" and admin["id"] == "G2001" and not admin["failed_images"]
