"""The set-up check's results and its first checks: the Python version and the packages installed.

``python test_setup.py`` prints one line per check. This module imports only the standard library (and
``core.errors``, which does too): a missing package must show up as a FAIL line, not as a traceback from
importing it. Versions come from the packages' metadata and presence from the import system's finders,
so nothing heavy is imported here.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import sqlite3
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

MIN_PYTHON = (3, 11)  # pyproject.toml's requires-python; test_setup.py checks it before importing anything
REINSTALL = "pip install -r requirements.txt"
SCALE_INSTALL = "pip install -r requirements-scale.txt"
# import names that differ from the distribution's name
_MODULE_OF = {"faiss-cpu": "faiss", "faiss-gpu": "faiss", "pillow": "PIL", "scikit-learn": "sklearn",
              "python-multipart": "python_multipart"}
_VERSIONS_OF = ("torch", "transformers", "faiss-cpu")
_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*([^;#]*)")


class Status(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, how it stands, and what to do when it is not OK."""

    name: str
    status: Status
    detail: str
    fix: str = ""
    facts: dict[str, Any] = field(default_factory=dict, kw_only=True)

    def line(self) -> str:
        text = f"{self.status.value:<4}  {self.name}: {self.detail}"
        return f"{text} -> {self.fix}" if self.fix and self.status != Status.OK else text

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.name, "status": self.status.value, "detail": self.detail, "fix": self.fix,
                "facts": self.facts}


@dataclass
class SetupReport:
    """Every check's result; ``ok`` when none FAILed. Secrets given are masked in whatever is rendered."""

    checks: list[Check]
    seconds: float = 0.0
    secrets: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not any(c.status == Status.FAIL for c in self.checks)

    def counts(self) -> dict[str, int]:
        return {s.value: sum(c.status == s for c in self.checks) for s in Status}

    def text(self) -> str:
        n = self.counts()
        verdict = "ready" if self.ok else "fix the FAIL lines above, then run `python test_setup.py` again"
        summary = f"{n['OK']} OK, {n['WARN']} WARN, {n['FAIL']} FAIL in {self.seconds:.1f} s: {verdict}"
        return self._masked("\n".join([*(c.line() for c in self.checks), summary]))

    def json(self) -> str:
        body = {"ok": self.ok, "counts": self.counts(), "seconds": round(self.seconds, 2),
                "checks": [c.as_dict() for c in self.checks]}
        return self._masked(json.dumps(body, default=str))

    def _masked(self, text: str) -> str:
        for secret in self.secrets:  # belt and braces: no check puts a secret in its text
            text = text.replace(secret, "REDACTED")
        return text


def check_python(version: tuple[int, ...] | None = None) -> Check:
    found = tuple(version or sys.version_info[:3])
    shown = ".".join(str(v) for v in found)
    if found[:2] < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        return Check("python", Status.FAIL, f"{shown} ({sys.executable}); this project needs {need} or newer",
                     f"install Python {need} and run the install command with it")
    return Check("python", Status.OK, f"{shown} ({sys.executable})", facts={"version": shown})


@dataclass(frozen=True)
class Requirement:
    """A line of a requirements file: the distribution, its version specifier and the module it installs."""

    name: str
    spec: str

    @property
    def module(self) -> str:
        return _MODULE_OF.get(self.name.lower(), self.name.lower().replace("-", "_"))


def read_requirements(path: Path) -> list[Requirement]:
    """The packages a requirements file names (``-r`` includes and options are not followed)."""
    found = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        match = _REQUIREMENT.match(line) if line and not line.startswith("-") else None
        if match:
            found.append(Requirement(match.group(1), match.group(2).strip()))
    return found


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def importable(module: str) -> bool:
    """Whether ``import module`` would find it (a finder's answer; the module itself is not run)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _outside_spec(version: str, spec: str) -> bool:
    if not spec:
        return False
    try:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
        from packaging.version import InvalidVersion
    except ImportError:  # packaging comes with transformers; without it the pins are not compared
        return False
    try:
        return not SpecifierSet(spec).contains(version, prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return False


def _package_check(req: Requirement, requirements: str) -> Check | None:
    """A line for a package that is missing, broken or outside its pin; None when it is fine."""
    version = installed_version(req.name)
    if not importable(req.module):
        state = "not installed" if version is None else f"{version} installed, but `import {req.module}` fails"
        return Check(f"package {req.name}", Status.FAIL, state, f"pip install -r {requirements}")
    if version is not None and _outside_spec(version, req.spec):
        return Check(f"package {req.name}", Status.WARN, f"{version} installed; {requirements} wants {req.spec}",
                     f"pip install -r {requirements}")
    return None


def check_packages(root: Path) -> list[Check]:
    """requirements.txt's packages: one OK line when all are there, else a line per missing or off-pin one;
    then a WARN if torchvision is installed (it does not import beside the pinned torch)."""
    path = root / "requirements.txt"
    try:
        required = read_requirements(path)
    except OSError as exc:
        return [Check("packages", Status.FAIL, f"cannot read {path} ({exc.strerror})",
                      "run the check from the project's folder")]
    problems = [c for c in (_package_check(r, "requirements.txt") for r in required) if c is not None]
    if not problems:
        problems.append(Check("packages", Status.OK, f"all {len(required)} packages of requirements.txt installed",
                              facts={"count": len(required)}))
    if importable("torchvision"):
        problems.append(Check("package torchvision", Status.WARN,
                              f"{installed_version('torchvision') or 'a version'} installed; it does not import "
                              "beside the pinned torch", "pip uninstall torchvision"))
    return problems


def check_versions() -> Check:
    """The versions that matter when reporting a problem: torch, transformers, faiss and the store engines."""
    facts: dict[str, Any] = {name: installed_version(name) for name in _VERSIONS_OF}
    facts.update({"sqlite": sqlite3.sqlite_version, "pymilvus": installed_version("pymilvus"),
                  "milvus-lite": installed_version("milvus-lite")})
    shown = ", ".join(f"{k} {v or '-'}" for k, v in facts.items())
    return Check("versions", Status.OK, shown, facts=facts)


def check_scale_packages(root: Path, needed_by: dict[str, str]) -> Check:
    """requirements-scale.txt's packages (Milvus, Ray): optional, unless a setting uses them.

    ``needed_by`` maps a module (``pymilvus``, ``ray``) to the setting that needs it."""
    try:
        scale = read_requirements(root / "requirements-scale.txt")
    except OSError:
        scale = [Requirement("pymilvus", ""), Requirement("milvus-lite", ""), Requirement("ray", "")]
    versions = {r.name: installed_version(r.name) if importable(r.module) else None for r in scale}
    missing = [r for r in scale if versions[r.name] is None]
    shown = ", ".join(f"{name} {v}" for name, v in versions.items() if v)
    wanted = [f"{r.name} (for {needed_by[r.module]})" for r in missing if r.module in needed_by]
    if wanted:
        return Check("scale packages", Status.FAIL, f"not installed: {', '.join(wanted)}", SCALE_INSTALL,
                     facts=versions)
    if missing:
        detail = f"{', '.join(r.name for r in missing)} not installed: only needed for Milvus / Ray ({SCALE_INSTALL})"
        return Check("scale packages", Status.OK, f"{shown}; {detail}" if shown else detail, facts=versions)
    return Check("scale packages", Status.OK, shown, facts=versions)


def failed(checks: Iterable[Check]) -> bool:
    return any(c.status == Status.FAIL for c in checks)
