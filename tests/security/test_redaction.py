"""Credentials in image URLs never reach an output: secrets planted in a catalogue's URLs (user:password@,
pass=, token=, jwt=, code=, X-Amz-Signature=, #access_token=) and in API requests are looked for in
everything the build and a real API process write: console, logs, reports, checkpoints and response bodies."""

from __future__ import annotations

import sys
import time
from urllib.parse import quote

import httpx
import pytest

from tests.api.conftest import API_KEY
from tests.fake_images import jpeg_bytes
from tests.http_server import Reply
from tests.security.conftest import SECRETS, secret_url
from utils.redact import redact_console, redact_json, redact_text

pytestmark = pytest.mark.slow
KEY = {"X-API-Key": API_KEY}


def _leaks(name: str, text: str) -> list[str]:
    return [f"{name}: {secret}" for secret in SECRETS if secret in text]


def _api_bodies(build, api) -> dict[str, str]:
    """Every kind of body a client can get back with a catalogue's or its own URL in it."""
    server = build.server
    server.routes["/ok2.jpg"] = Reply(jpeg_bytes(120, 90, seed=61))
    bodies: dict[str, str] = {}
    with httpx.Client(base_url=api.url, timeout=60) as client:
        def keep(name: str, response: httpx.Response) -> httpx.Response:
            bodies[name] = response.text
            return response

        for path in ("/health", "/models", "/shop/products/U1", "/shop/products/U2", "/shop/products/U1/similar",
                     "/shop/search/text?q=picture&token=TOKVAL", "/all/search/text?q=picture",
                     f"/shop/products/{quote('x?token=TOKVAL', safe='')}"):
            keep(path, client.get(path))
        keep("image search", client.post("/shop/search", content=jpeg_bytes(seed=40),
                                          headers={"Content-Type": "image/jpeg"}))
        upsert = {"id": "N1", "title": "New", "images": [secret_url(server, "/ok2.jpg"),
                                                            secret_url(server, "/gone2.jpg", "dave")]}
        assert keep("upsert", client.post("/shop/products", json=upsert, headers=KEY)).status_code == 200
        none = {"id": "N2", "title": "None", "images": [secret_url(server, "/gone3.jpg", "erin")]}
        assert keep("upsert failed", client.post("/shop/products", json=none, headers=KEY)).status_code == 400
        keep("upsert invalid", client.post("/shop/products", headers=KEY,
                                           json={**none, "extra": {"k": [1]}, "title": None}))
        job = client.post("/shop/jobs/embed", json={"ids": [secret_url(server, "/id.jpg", "frank")]}, headers=KEY)
        task = job.json()["task_id"]
        deadline = time.monotonic() + 120
        while client.get(f"/jobs/{task}", headers=KEY).json()["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, "the embed job did not finish"
            time.sleep(0.2)
        keep("jobs", client.get("/jobs", headers=KEY))
        keep("clusters", client.get("/shop/analytics/clusters", params={"k": 2}, headers=KEY))
    return bodies


def test_no_planted_secret_reaches_any_output(hostile_build, hostile_api):
    bodies = _api_bodies(hostile_build, hostile_api)
    root = hostile_build.root
    outputs = {"build stdout": hostile_build.stdout, "build stderr": hostile_build.stderr,
               **{f"api {name}": body for name, body in bodies.items()}}
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix in (".log", ".json", ".out", ".err")
             and not p.is_relative_to(root / "data")]
    deadline = time.monotonic() + 10  # the access line of a request is written once its response has gone
    while "/shop/analytics/clusters" not in (root / "logs" / "api.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    outputs.update({str(p.relative_to(root)): p.read_text(errors="replace") for p in files})

    leaks = [leak for name, text in outputs.items() for leak in _leaks(name, text)]
    assert not leaks, leaks
    # ...and the URLs were there to leak: each of these outputs quotes one, with its credentials replaced
    host = f"127.0.0.1:{hostile_build.server.port}"
    gone = f"http://REDACTED@{host}/gone.jpg?pass=REDACTED&token=REDACTED"
    assert f"row {hostile_build.rows['U2']}: {gone}" in hostile_build.stdout
    assert gone in outputs["models/shop/download_report.json"] and gone in outputs["logs/pipeline.log"]
    assert "ftp://REDACTED@127.0.0.1/x.jpg" in outputs["models/shop/validation_report.json"]
    assert "#access_token=REDACTED" in bodies["/shop/products/U1"]
    assert f"http://REDACTED@{host}/gone2.jpg" in bodies["upsert"]
    assert f"http://REDACTED@{host}/gone3.jpg" in bodies["upsert failed"]
    assert f"http://REDACTED@{host}/id.jpg" in bodies["jobs"]


def test_console_redaction_keeps_every_other_character(capsys):
    saved = sys.stdout, sys.stderr
    try:
        redact_console()
        print("fetch http://a:S3CRETPW@h/x.jpg?w=10&token=TOKVAL failed", "plain text", sep="\n")  # noqa: T201
    finally:
        sys.stdout, sys.stderr = saved
    assert capsys.readouterr().out == "fetch http://REDACTED@h/x.jpg?w=10&token=REDACTED failed\nplain text\n"


def test_unrelated_output_is_untouched():
    text = 'title "Red mug" costs 12 & ships in 2 days; see https://shop.example/p/1?size=m#reviews'
    assert redact_text(text) == text
    assert redact_json({"a": [text, 1, None], "b": {"k": 2.5}}) == {"a": [text, 1, None], "b": {"k": 2.5}}
