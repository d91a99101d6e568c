"""``python test_setup.py`` as a merchant runs it, in real subprocesses: a ready machine (exit 0), then each
check's FAIL path - a package whose import is blocked, a missing backbone folder, an unreachable hub, a taken
port, a read-only folder, a Milvus that does not answer, a bad setting, an old Python - with what to do, in
text and in --json (exit 1). The admin key and the Milvus token never appear in the output."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import PROJECT_ROOT
from core.model_config import ModelRegistry
from core.setup_check import importable
from pipeline.report import MODEL_LIST_COLUMNS, model_row
from pipeline.runner import run_model
from tests.fake_images import jpeg_bytes
from tests.ports import free_port

SCRIPT = PROJECT_ROOT / "test_setup.py"
KEY = "k3y-that-must-never-show-0123456789"
TOKEN = "root:t0ken-that-must-never-show"
# Runs test_setup.py with some imports blocked (None in sys.modules makes `import x` fail, as if x were missing)
# and, optionally, an older Python's version_info.
_WRAPPER = ("import runpy, sys\n"
            "blocked, fake_version, repo, script = sys.argv[1:5]\n"
            "sys.modules.update(dict.fromkeys(filter(None, blocked.split(','))))\n"
            "if fake_version: sys.version_info = tuple(map(int, fake_version.split('.'))) + ('final', 0)\n"
            "sys.path.insert(0, repo)\n"
            "sys.argv = [script, *sys.argv[5:]]\n"
            "runpy.run_path(script, run_name='__main__')\n")


def _setup_check(root: Path, *args: str, block: tuple[str, ...] = (), python: str = "", prefix: tuple[str, ...] = (),
                 **env: str) -> subprocess.CompletedProcess[str]:
    """``python test_setup.py ARGS`` for a merchant whose IMAGESEARCH_ROOT is ``root`` (run from there)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGESEARCH_", "HF_"))}
    environ.update(IMAGESEARCH_ROOT=str(root), IMAGESEARCH_TORCH_THREADS="1", HF_HOME=str(root.parent / "hf_home"),
                   **env)
    command = [sys.executable, "-c", _WRAPPER, ",".join(block), python, str(PROJECT_ROOT), str(SCRIPT), *args] \
        if block or python else [sys.executable, str(SCRIPT), *args]
    return subprocess.run([*prefix, *command], env=environ, cwd=root, capture_output=True, text=True, timeout=180)


def _lines(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Each check's line by its name ("FAIL  folder models: ..." under "folder models")."""
    return {line[6:].split(": ", 1)[0]: line for line in proc.stdout.splitlines()[:-1]}


def _catalogue(root: Path, model: str = "textiles", products: int = 3) -> None:
    folder = root / "data" / model
    (folder / "images").mkdir(parents=True)
    rows = ["id,title,images,category"]
    for i in range(products):
        (folder / "images" / f"p{i}.jpg").write_bytes(jpeg_bytes(80, 60, seed=i))
        rows.append(f"P{i},Product {i},images/p{i}.jpg,things")
    (folder / "products.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture
def listening() -> Iterator[int]:
    """A port some other program listens on (it accepts connections and never answers)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def _no_secrets(proc: subprocess.CompletedProcess[str]) -> None:
    for secret in (KEY, TOKEN, TOKEN.split(":")[1]):
        assert secret not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_ready_machine_passes_and_shows_each_model_s_build_state(make_settings, tiny_clip, listening, request):
    settings = make_settings()
    _catalogue(settings.root)
    run_model(settings, ModelRegistry.discover(settings).get("textiles"), progress=False)
    _catalogue(settings.root, "lamps")  # found, not built yet
    # a model on a hub id: not cached, and the hub (here a local stand-in that accepts connections) answers
    (settings.data_dir / "lamps" / "model.json").write_text('{"backbone": "openai/clip-vit-base-patch32"}')
    milvus = {}
    if importable("pymilvus"):  # a model in a Milvus server that answers (the shared milvus-lite server)
        _catalogue(settings.root, "remote")
        (settings.data_dir / "remote" / "model.json").write_text('{"store": "milvus"}')
        uri = request.getfixturevalue("milvus_server").uri
        milvus = {"IMAGESEARCH_MILVUS_URI": uri, "IMAGESEARCH_MILVUS_PREFIX": "setupcheck_",
                  "IMAGESEARCH_MILVUS_TOKEN": TOKEN}
    api, ui = free_port(), free_port()
    proc = _setup_check(settings.root, "--api-port", str(api), "--ui-port", str(ui), IMAGESEARCH_API_KEY=KEY,
                        IMAGESEARCH_CLIP_MODEL=str(tiny_clip), HF_ENDPOINT=f"http://127.0.0.1:{listening}", **milvus)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = _lines(proc)
    assert proc.stdout.splitlines()[-1].endswith(": ready")
    assert [name for name, line in lines.items() if not line.startswith(("OK  ", "WARN"))] == []
    for name in ("python", "packages", "versions", "settings", "scale packages", "device", "folder data",
                 "folder models", "folder checkpoints", "folder logs", "store local", "admin key"):
        assert lines[name].startswith("OK  "), lines[name]
    assert "torch 2.13.0" in lines["versions"] and "faiss-cpu" in lines["versions"] and "sqlite" in lines["versions"]
    assert "precision auto -> " in lines["device"] and "torch threads 1" in lines["device"]
    assert lines[f"backbone {tiny_clip}"].startswith("OK  ") and "CLIP config loads" in lines[f"backbone {tiny_clip}"]
    hub = lines["backbone openai/clip-vit-base-patch32"]
    assert hub.startswith("OK  ") and "the model hub answers" in hub and "used by lamps" in hub
    assert lines["api port"] == f"OK    api port: 127.0.0.1:{api} free"
    assert lines["ui port"] == f"OK    ui port: 0.0.0.0:{ui} free"
    # the build state as `run_training.py --list` shows it
    row = dict(zip(MODEL_LIST_COLUMNS, model_row(ModelRegistry.discover(settings).get("textiles"), settings),
                   strict=True))
    built = lines["model textiles"]
    assert built.startswith("OK  ") and f"built {row['built at']}: 3 products" in built and "index flat (3)" in built
    assert lines["model lamps"] == (f"WARN  model lamps: {settings.data_dir / 'lamps' / 'products.csv'} found, not "
                                    "built yet -> run `python run_training.py lamps`")
    assert "store local: general, lamps, shirts, textiles: SQLite" in lines["store local"]
    if milvus:
        assert lines["store milvus"] == (f"OK    store milvus: remote at {milvus['IMAGESEARCH_MILVUS_URI']}: answers; "
                                         "remote: collections created by their first build")
        assert lines["model remote"].startswith("WARN  model remote: ") and "not built yet" in lines["model remote"]
    assert lines["admin key"] == "OK    admin key: IMAGESEARCH_API_KEY is set (not shown)"
    _no_secrets(proc)


@pytest.mark.slow
def test_failures_say_what_to_do_in_json(tmp_path, listening):
    root = tmp_path / "root"
    _catalogue(root)
    (root / "models").mkdir()  # read-only below
    (root / "logs").write_text("a file where the logs folder goes")
    read_only = _read_only(root / "models")
    (root / "data" / "remote").mkdir(parents=True)
    (root / "data" / "remote" / "products.csv").write_text("id,title,images\n")
    (root / "data" / "remote" / "model.json").write_text(json.dumps({"store": "milvus",
                                                                     "backbone": "openai/clip-vit-base-patch32"}))
    closed = free_port()
    proc = _setup_check(root, "--json", "--api-port", str(listening), "--ui-port", str(free_port()),
                        block=("sklearn",), IMAGESEARCH_CLIP_MODEL=str(tmp_path / "models" / "clip"),
                        HF_HUB_OFFLINE="1", IMAGESEARCH_API_KEY=KEY, IMAGESEARCH_MILVUS_TOKEN=TOKEN,
                        IMAGESEARCH_MILVUS_URI=f"http://127.0.0.1:{closed}", prefix=read_only or ())
    (root / "models").chmod(0o755)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)  # one JSON object, nothing else
    checks = {c["check"]: c for c in report["checks"]}
    assert report["ok"] is False and report["counts"]["FAIL"] == sum(c["status"] == "FAIL" for c in checks.values())
    failed = {name for name, c in checks.items() if c["status"] == "FAIL"}
    assert failed - {"folder models"} == {"package scikit-learn", f"backbone {tmp_path / 'models' / 'clip'}",
                                          "backbone openai/clip-vit-base-patch32", "store milvus", "api port",
                                          "folder logs"}
    if read_only is not None:
        ro = checks["folder models"]
        assert ro["status"] == "FAIL" and ro["detail"].startswith(f"{root / 'models'} is not writable (")
        assert ro["fix"] == (f"make {root / 'models'} writable for this user, or set IMAGESEARCH_ROOT to a writable "
                             "folder")
    assert checks["folder logs"]["detail"] == f"{root / 'logs'} is a file, not a folder"
    assert checks["folder data"]["status"] == checks["folder checkpoints"]["status"] == "OK"
    assert checks["package scikit-learn"]["detail"].endswith("installed, but `import sklearn` fails")
    assert checks["package scikit-learn"]["fix"] == "pip install -r requirements.txt"
    missing = checks[f"backbone {tmp_path / 'models' / 'clip'}"]
    assert "no folder" in missing["detail"] and "python -m utils.tiny_clip" in missing["fix"]
    offline = checks["backbone openai/clip-vit-base-patch32"]
    assert "model hub cannot be reached (HF_HUB_OFFLINE is set)" in offline["detail"]
    assert offline["fix"].startswith("without network access, point IMAGESEARCH_CLIP_MODEL at a local folder")
    assert checks["store local"]["detail"].startswith("general, shirts, textiles: SQLite ")
    milvus = checks["store milvus"]
    assert milvus["detail"].startswith(f"nothing answers at http://127.0.0.1:{closed}")
    assert milvus["fix"] == "start Milvus there, or fix IMAGESEARCH_MILVUS_URI"
    assert checks["model remote"]["status"] == "WARN"  # its build state cannot be read without its Milvus
    assert checks["api port"]["detail"] == f"127.0.0.1:{listening} is in use by another program"
    assert "run_api.py --port N" in checks["api port"]["fix"]
    assert checks["admin key"]["status"] == "OK" and checks["admin key"]["facts"] == {"set": True}
    _no_secrets(proc)


def _read_only(folder: Path) -> tuple[str, ...] | None:
    """Make ``folder`` read-only for the command: for root (which ignores permission bits) a command prefix that
    runs it in a private mount namespace with a read-only bind mount of the folder; for anyone else chmod (and an
    empty prefix). None where neither is possible (root without user namespaces)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return ()
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-r", "-m", "true"]).returncode != 0:
        return None
    return ("unshare", "-r", "-m", "sh", "-c", f'mount --bind "{folder}" "{folder}" && '
            f'mount -o remount,bind,ro "{folder}" "{folder}" && exec "$0" "$@"')


def test_without_numpy_the_check_still_reports_and_exits_1(tmp_path):
    proc = _setup_check(tmp_path, block=("numpy",))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = _lines(proc)
    assert lines["package numpy"].endswith("`import numpy` fails -> pip install -r requirements.txt")
    assert lines["project"].startswith("FAIL  project: its code cannot start")


def test_a_bad_setting_fails_and_an_old_python_stops_first(tmp_path):
    bad = _setup_check(tmp_path, IMAGESEARCH_BATCH_SIZE="-1", IMAGESEARCH_API_KEY=KEY)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert _lines(bad)["settings"].startswith("FAIL  settings: invalid setting IMAGESEARCH_BATCH_SIZE: ")
    _no_secrets(bad)
    old = _setup_check(tmp_path, "--json", python="3.10.4")
    assert old.returncode == 1
    assert json.loads(old.stdout)["checks"] == [{
        "check": "python", "status": "FAIL", "detail": f"3.10.4 ({sys.executable}); this project needs 3.11 or newer",
        "fix": "install Python 3.11 and run the install command with it"}]


def test_pytest_collects_nothing_from_the_script(tmp_path):
    """The script is named like a test module: pytest (which only looks under tests/) finds no test in it."""
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # collection is pytest's own; plugins only cost time
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-o", "addopts=",
                           str(SCRIPT)], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 5 and "no tests collected" in proc.stdout, proc.stdout + proc.stderr
