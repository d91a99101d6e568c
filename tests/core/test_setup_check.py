"""The set-up check's parts in this process: the requirements it reads, its port and folder probes on real
sockets and files, and the report (masking, JSON). The whole command runs in tests/pipeline/test_setup_check.py."""

from __future__ import annotations

import json
import socket
import sys
import tomllib

from core.config import PROJECT_ROOT
from core.setup_check import (
    MIN_PYTHON,
    Check,
    SetupReport,
    Status,
    check_packages,
    check_python,
    importable,
    read_requirements,
)
from core.setup_probes import check_folder, check_port, check_stores


def test_every_requirement_names_the_module_it_installs():
    """The check looks each package up by its import name: a wrong name would report an installed package missing."""
    required = read_requirements(PROJECT_ROOT / "requirements.txt")
    assert {"torch", "faiss-cpu", "pillow", "scikit-learn", "python-multipart"} <= {r.name for r in required}
    assert [r.name for r in required if not importable(r.module)] == []
    assert {r.name: r.spec for r in required}["torch"] == "==2.13.0"
    assert "ray" in {r.name for r in read_requirements(PROJECT_ROOT / "requirements-scale.txt")}


def test_the_python_floor_is_pyproject_s():
    import test_setup

    floor = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert floor == ">=" + ".".join(map(str, MIN_PYTHON)) and test_setup.MIN_PYTHON == MIN_PYTHON
    assert check_python().status == Status.OK
    old = check_python((3, 10, 4))
    assert old.status == Status.FAIL and "3.10.4" in old.detail and "3.11 or newer" in old.detail


def test_a_missing_package_fails_and_one_off_its_pin_warns(tmp_path):
    (tmp_path / "requirements.txt").write_text("# pins\n-r other.txt\nnumpy>=1.0\ntorch==0.0.1  # old\n"
                                                "no-such-package-xyz>=1\n")
    lines = {c.name: c for c in check_packages(tmp_path)}
    assert "packages" not in lines  # no "all installed" line when one is missing
    missing = lines["package no-such-package-xyz"]
    assert missing.status == Status.FAIL and missing.detail == "not installed"
    assert missing.fix == "pip install -r requirements.txt"
    pinned = lines["package torch"]
    assert pinned.status == Status.WARN and "requirements.txt wants ==0.0.1" in pinned.detail
    assert "package numpy" not in lines


def test_a_port_is_free_until_a_server_listens_on_it():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        server.listen()
        taken = check_port("api port", "127.0.0.1", port, "/health", "--port N")
        wildcard = check_port("ui port", "0.0.0.0", port, "/_stcore/health", "--port N")
    assert taken.status == wildcard.status == Status.FAIL
    assert f"127.0.0.1:{port} is in use by another program" in taken.line() and "--port N" in taken.line()
    free = check_port("api port", "127.0.0.1", port, "/health", "--port N")
    assert free.status == Status.OK and free.detail == f"127.0.0.1:{port} free"


def test_a_folder_must_be_writable_or_creatable(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    under_file = check_folder("data", tmp_path / "file" / "data")
    assert under_file.status == Status.FAIL and "is a file, not a folder" in under_file.detail
    new = check_folder("logs", tmp_path / "root" / "logs")
    assert new.status == Status.OK and f"created in {tmp_path} on first use" in new.detail
    assert not (tmp_path / "root").exists()  # checking creates nothing
    there = check_folder("models", tmp_path)
    assert there.status == Status.OK and "writable" in there.detail and there.facts["free_bytes"] > 0
    assert list(tmp_path.iterdir()) == [tmp_path / "file"]  # the probe file is gone


def test_the_report_masks_secrets_and_fails_on_any_fail():
    checks = [Check("admin key", Status.OK, "set"), Check("store milvus", Status.FAIL, "token hunter2-xyz refused",
                                                            "check the token", facts={"uri": "hunter2-xyz"})]
    report = SetupReport(checks, seconds=1.25, secrets=("hunter2-xyz",))
    assert not report.ok and "hunter2" not in report.text() + report.json()
    body = json.loads(report.json())
    assert body["ok"] is False and body["counts"] == {"OK": 1, "WARN": 0, "FAIL": 1} and body["seconds"] == 1.25
    assert body["checks"][1] == {"check": "store milvus", "status": "FAIL", "detail": "token REDACTED refused",
                                 "fix": "check the token", "facts": {"uri": "REDACTED"}}
    assert report.text().splitlines()[1] == "FAIL  store milvus: token REDACTED refused -> check the token"
    assert report.text().endswith("1 OK, 0 WARN, 1 FAIL in 1.2 s: fix the FAIL lines above, then run "
                                  "`python test_setup.py` again")
    assert SetupReport(checks[:1]).ok


def test_the_local_store_fails_without_faiss(tmp_path, monkeypatch):
    from core.config import load_settings
    from core.model_config import BUILTIN_MODELS

    settings = load_settings(root=tmp_path)
    assert [c.status for c in check_stores(settings, list(BUILTIN_MODELS))] == [Status.OK]
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now fails, as if it were not installed
    (local,) = check_stores(settings, list(BUILTIN_MODELS))
    assert local.line() == ("FAIL  store local: general, shirts: SQLite + FAISS, but faiss cannot be imported -> "
                            "pip install -r requirements.txt")
