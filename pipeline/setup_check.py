"""``python test_setup.py``: every set-up check in order, each model's catalogue with its build state as
``run_training.py --list`` shows it.

Each check runs guarded: a part that is broken (a package that imports but crashes, a corrupt build state)
becomes a FAIL line and the others still run. Only the standard library is imported before the package
checks have run, so a missing package is reported, not raised.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING

from core.setup_check import (REINSTALL, Check, SetupReport, Status, check_packages, check_python,
                              check_scale_packages, check_versions)

if TYPE_CHECKING:
    from core.config import Settings
    from core.model_config import ModelSpec

REPO_ROOT = Path(__file__).resolve().parent.parent  # core.config's PROJECT_ROOT, known before pydantic imports
_SECRET_VARIABLES = ("IMAGESEARCH_API_KEY", "IMAGESEARCH_MILVUS_TOKEN")


def run_setup_check(*, api_port: int | None = None, ui_port: int | None = None) -> SetupReport:
    """Every check; the settings are built here, since a bad setting is one of the things reported."""
    start = time.monotonic()
    report = SetupReport([check_python(), *check_packages(REPO_ROOT), check_versions()],
                         secrets=tuple(v for k in _SECRET_VARIABLES if (v := os.environ.get(k))))
    try:
        from core.config import load_settings
        from core.errors import ImageSearchError
    except ImportError as exc:
        report.checks.append(Check("project", Status.FAIL, f"its code cannot start ({exc})", REINSTALL))
    else:
        try:
            settings = load_settings()
        except ImageSearchError as exc:
            report.checks.append(Check("settings", Status.FAIL, exc.message,
                                       "fix or unset that variable (in the environment or .env)"))
        else:
            report.secrets += tuple(s for s in (settings.api_key, settings.milvus_token) if s)
            report.checks += _settings_checks(settings, api_port, ui_port)
    report.seconds = time.monotonic() - start
    return report


def _settings_checks(settings: Settings, api_port: int | None, ui_port: int | None) -> list[Check]:
    from core import setup_probes as probe  # pydantic and numpy import: the settings just loaded
    from core.encoder import hub_reachable
    from core.errors import ImageSearchError
    from core.model_config import ModelRegistry

    env_file = " (.env read)" if Path(".env").is_file() else ""
    checks = [Check("settings", Status.OK, f"valid{env_file}; root {settings.root}",
                    facts={"root": str(settings.root)})]
    try:
        specs = list(ModelRegistry.discover(settings))
    except ImageSearchError as exc:
        return [*checks, Check("models", Status.FAIL, exc.message, "fix that model.json")]
    checks.append(check_scale_packages(REPO_ROOT, _needs(settings, specs)))
    checks += _guarded("device", partial(probe.check_device, settings))
    hub_once = cache(hub_reachable)  # one probe, however many models name hub ids
    for backbone, users in _backbones(settings, specs).items():
        checks += _guarded(f"backbone {backbone}", partial(probe.check_backbone, backbone, users, hub_once))
    for name in ("data", "models", "checkpoints", "logs"):
        checks += _guarded(f"folder {name}", partial(probe.check_folder, name, getattr(settings, f"{name}_dir")))
    stores = _guarded("store", partial(probe.check_stores, settings, specs))
    unreachable = any(c.name == "store milvus" and c.status == Status.FAIL for c in stores)
    for spec in specs:
        checks += _guarded(f"model {spec.name}", partial(check_model, settings, spec, skip_milvus=unreachable))
    checks += stores
    checks += _guarded("ports", partial(probe.check_ports, settings, api_port, ui_port))
    checks.append(probe.check_admin_key(settings))
    if "core.milvus_client" in sys.modules:  # stop the embedded milvus-lite a model's --list row started
        from core.milvus_client import close_clients

        close_clients()
    return checks


def _guarded(name: str, check: Callable[[], Check | list[Check]]) -> list[Check]:
    """The check's lines; a check that crashed is one FAIL line with the exception's first line."""
    try:
        found = check()
    except Exception as exc:  # a diagnostic reports what broke and goes on with the other checks
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        return [Check(name, Status.FAIL, f"could not be checked ({type(exc).__name__}: {detail})", REINSTALL)]
    return found if isinstance(found, list) else [found]


def _needs(settings: Settings, specs: list[ModelSpec]) -> dict[str, str]:
    """The optional modules these settings use, each with the setting that uses it."""
    from core.types import Executor, StoreKind

    needs = {}
    milvus = [s.name for s in specs if s.store_for(settings) == StoreKind.MILVUS]
    if milvus:
        needs["pymilvus"] = f"the Milvus store of {', '.join(milvus)}"
        if not settings.milvus_uri.strip() or "://" not in settings.milvus_uri:
            needs["milvus_lite"] = f"the milvus-lite file of {', '.join(milvus)}"
    if settings.executor == Executor.RAY:
        needs["ray"] = "IMAGESEARCH_EXECUTOR=ray"
    return needs


def _backbones(settings: Settings, specs: list[ModelSpec]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for spec in specs:
        found.setdefault(spec.backbone_for(settings), []).append(spec.name)
    return found


def check_model(settings: Settings, spec: ModelSpec, *, skip_milvus: bool = False) -> Check:
    """The model's products.csv and its build state, from the ``--list`` row."""
    from core.types import StoreKind
    from pipeline.hints import csv_location_hint
    from pipeline.report import MODEL_LIST_COLUMNS, model_row

    name, csv = f"model {spec.name}", spec.paths(settings).csv
    build = f"`python run_training.py {spec.name}`"
    if skip_milvus and spec.store_for(settings) == StoreKind.MILVUS:
        return Check(name, Status.WARN, "build state not read: its Milvus store is not usable",
                     "fix the store milvus line first")
    row = dict(zip(MODEL_LIST_COLUMNS, model_row(spec, settings), strict=True))
    built = row["indexed"].startswith("yes")
    state = (f"built {row['built at']}: {row['products']} products, {row['images cached']} images cached, failed "
             f"{row['failed']}, index {row['index']} {row['indexed'].removeprefix('yes ')}, backbone {row['backbone']}"
             if built else "not built yet")
    facts = {k.replace(" ", "_"): v for k, v in row.items()}
    if row["csv"] == "no":
        hint = csv_location_hint(settings, spec.name)
        if hint:
            return Check(name, Status.WARN, f"no {csv}; {hint}", f"move the CSV there, then run {build}", facts=facts)
        return Check(name, Status.OK, f"no products.csv ({state}); put one at {csv} to build it", facts=facts)
    if row["csv"] == "new" or not built:
        return Check(name, Status.WARN, f"{csv} found, not built yet", f"run {build}", facts=facts)
    if row["csv"] == "changed":
        return Check(name, Status.WARN, f"{csv} changed since the last build; {state}", f"run {build}", facts=facts)
    return Check(name, Status.OK, f"{csv} found; {state}", facts=facts)
