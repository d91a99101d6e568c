"""schemathesis (every check, a bounded number of examples) against the running API, with and without the key."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Annotated

import httpx
import pytest

from tests.api.conftest import API_KEY, start_server, stop_server
from tests.security.conftest import KEY, guarded_settings

CONFIG = Path(__file__).with_name("schemathesis.toml")


# Without a key the admin routes answer 401 whatever the body, so the anonymous run draws half as many examples
# and skips the coverage and stateful phases (13.7 s -> 5.7 s alone): the admin run, with the key, runs every
# phase on every route, the public ones included, at the full count.
_ANONYMOUS = ["--max-examples", "4", "--phases", "examples,fuzzing"]


@pytest.mark.slow
@pytest.mark.parametrize("headers", [_ANONYMOUS, ["-H", f"X-API-Key: {API_KEY}"]], ids=["anonymous", "admin"])
def test_schemathesis_all_checks_pass(sec_root, tiny_clip, tmp_path, headers):
    st = shutil.which("st") or shutil.which("schemathesis")
    assert st, "schemathesis is in requirements-dev.txt"
    server = start_server(guarded_settings(sec_root, tiny_clip, max_inflight_searches=32))
    try:
        proc = subprocess.run([st, "--config-file", str(CONFIG), "run", f"{server.url}/openapi.json",
                               "--checks", "all", "--workers", "1", *headers],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
    finally:
        stop_server(server)
    failures = proc.stdout[proc.stdout.find("FAILURES"):] if "FAILURES" in proc.stdout else proc.stdout
    assert proc.returncode == 0, "\n".join(line[:300] for line in failures.splitlines()[:80])


def test_an_image_reference_the_schema_admits_is_one_the_server_accepts(guarded):
    """The admin body's image pattern, read as a client's regex engine reads it, admits no reference the server
    then refuses as blank (schemathesis found "\\x1f": not whitespace to a client, stripped by the server)."""
    from pydantic import Field, TypeAdapter

    spec = httpx.get(f"{guarded.url}/openapi.json").json()
    item = spec["components"]["schemas"]["ProductUpsert"]["properties"]["images"]["items"]
    as_clients_read_it = TypeAdapter(Annotated[str, Field(pattern=item["pattern"])])  # Rust regex: Unicode \s
    admitted = []
    for ch in map(chr, range(0x3000 + 1)):
        try:
            as_clients_read_it.validate_python(ch)
        except ValueError:
            continue
        admitted.append(ch)
    assert "a" in admitted and " " not in admitted
    blank_to_the_server = [ch for ch in admitted if not ch.strip()]
    assert blank_to_the_server == []
    response = httpx.post(f"{guarded.url}/general/products", headers=KEY, timeout=30,
                          json={"id": "p1", "title": "t", "images": ["\x1f"]})
    assert response.status_code == 422 and response.json()["errors"][0]["loc"][-2:] == ["images", 0]
