"""API keys and their scopes: the one place that says whether a key may do something to a catalogue.

A key has a name (what logs show; never the key) and scopes: ``admin`` (everything), ``write:<model>``
(that model's edits, jobs and backups) and ``read:analytics`` (the analytics page and the query log).
Keys are kept as SHA-256 digests, never in plain: in the keys file (``IMAGESEARCH_API_KEYS_FILE``, managed
by ``run_keys.py``, re-read whenever it changes, so keys rotate without a restart) and in the
``IMAGESEARCH_API_KEYS`` setting. The single ``IMAGESEARCH_API_KEY`` of earlier releases is an ``admin`` key.
Keys are 256-bit random tokens made by :func:`new_key`, so an unsalted SHA-256 is as good as a slow hash here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from core.errors import ConfigError
from utils.atomic import write_atomic

ADMIN = "admin"
READ_ANALYTICS = "read:analytics"
WRITE_PREFIX = "write:"
ENV_KEY_NAME = "IMAGESEARCH_API_KEY"  # the name the legacy single key goes by in logs
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MODEL = re.compile(r"[a-z0-9_-]{1,64}")  # core.model_config's rule ("all" is not a model)
_DIGEST = re.compile(r"[0-9a-f]{64}")


class Action(StrEnum):
    """What a request does, as far as keys are concerned."""

    WRITE = "write"  # a model's edits, reloads, jobs and backups
    ANALYTICS = "analytics"  # the analytics page and the query log
    JOBS = "jobs"  # read the job list (each job is then checked against its model)


def check_scope(scope: str) -> str:
    """``scope`` if it is one we know, else ConfigError saying which exist."""
    model = scope[len(WRITE_PREFIX):] if scope.startswith(WRITE_PREFIX) else None
    if scope in (ADMIN, READ_ANALYTICS) or (model is not None and _MODEL.fullmatch(model) and model != "all"):
        return scope
    raise ConfigError(f"unknown key scope {scope!r}: use admin, read:analytics or write:<model>")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def new_key() -> str:
    return "isk_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ApiKey:
    """One key as stored: its name, scopes, digest and when it was made (the key itself is never kept)."""

    name: str
    scopes: frozenset[str]
    sha256: str
    created_at: str = ""

    @property
    def id(self) -> str:
        """A short handle to tell two keys of one name apart (a prefix of the digest: reveals nothing)."""
        return self.sha256[:8]

    def may(self, action: Action, model: str | None = None) -> bool:
        """Whether this key may do ``action`` (on ``model`` where the action concerns one)."""
        if ADMIN in self.scopes:
            return True
        analytics = READ_ANALYTICS in self.scopes
        if action == Action.ANALYTICS:
            return analytics
        if action == Action.WRITE:
            return model is not None and f"{WRITE_PREFIX}{model}" in self.scopes
        # Action.JOBS: the list (model None) for anyone with a write or analytics scope; one job by its model
        if model is None:
            return analytics or any(s.startswith(WRITE_PREFIX) for s in self.scopes)
        return analytics or f"{WRITE_PREFIX}{model}" in self.scopes

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "scopes": sorted(self.scopes), "sha256": self.sha256, "created_at": self.created_at}

    @classmethod
    def from_json(cls, raw: Any, where: str) -> ApiKey:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: each key must be an object with name, scopes and sha256")
        name, scopes, sha = raw.get("name"), raw.get("scopes"), str(raw.get("sha256", "")).lower()
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(f"{where}: key name {name!r} must be 1-64 characters of A-Z a-z 0-9 _ . -")
        if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
            raise ConfigError(f"{where}: key {name!r} needs a list of scopes")
        if not _DIGEST.fullmatch(sha):
            raise ConfigError(f"{where}: key {name!r}: sha256 must be 64 hex digits (the key's SHA-256, never the key)")
        return cls(name=name, scopes=frozenset(check_scope(s) for s in scopes), sha256=sha,
                   created_at=str(raw.get("created_at", "")))


def parse_keys(raw: Any, where: str) -> list[ApiKey]:
    """Keys from JSON: a list of key objects, or ``{"keys": [...]}`` (the keys file's shape)."""
    if isinstance(raw, dict):
        raw = raw.get("keys", [])
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list of keys")
    return [ApiKey.from_json(item, where) for item in raw]


@dataclass(frozen=True)
class KeyTable:
    """Every key that is valid now, by digest."""

    keys: tuple[ApiKey, ...] = ()
    _by_digest: dict[str, ApiKey] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_digest.update({k.sha256: k for k in self.keys})

    @property
    def configured(self) -> bool:
        return bool(self.keys)

    def find(self, presented: str) -> ApiKey | None:
        """The key ``presented`` is, or None. Only its digest is looked up: timing can tell nothing about a
        key from a lookup among digests."""
        return self._by_digest.get(digest(presented))


class KeyFile:
    """The keys file: JSON ``{"keys": [...]}`` of digests, written atomically and readable by its owner only."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> list[ApiKey]:
        if not self.path.is_file():
            return []
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.path}: not a readable keys file ({exc})") from None
        return parse_keys(raw, str(self.path))

    def write(self, keys: Iterable[ApiKey]) -> None:
        text = json.dumps({"keys": [k.to_json() for k in keys]}, indent=2) + "\n"

        def _write(fh: Any) -> None:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(text.encode("utf-8"))

        write_atomic(self.path, _write)

    def add(self, name: str, scopes: Sequence[str]) -> tuple[str, ApiKey]:
        """A new key named ``name`` (other keys of that name stay valid); returns the key, shown only now."""
        plain = new_key()
        entry = ApiKey.from_json({"name": name, "scopes": list(scopes), "sha256": digest(plain),
                                  "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}, str(self.path))
        self.write([*self.read(), entry])
        return plain, entry

    def rotate(self, name: str) -> tuple[str, ApiKey]:
        """A new key with the scopes of ``name``'s newest; the old ones stay valid until :meth:`retire`."""
        mine = self._named(name)
        return self.add(name, sorted(mine[-1].scopes))

    def retire(self, name: str) -> list[ApiKey]:
        """Remove every key of ``name`` but the newest; returns those removed."""
        mine = self._named(name)
        gone = mine[:-1]
        self.write(k for k in self.read() if k not in gone)
        return gone

    def remove(self, name: str, key_id: str | None = None) -> list[ApiKey]:
        """Remove ``name``'s keys (only the one with ``key_id`` when given); returns those removed."""
        gone = [k for k in self._named(name) if key_id is None or k.id == key_id]
        if not gone:
            raise ConfigError(f"key {name!r} has no key with id {key_id!r}; see: python run_keys.py list")
        self.write(k for k in self.read() if k not in gone)
        return gone

    def _named(self, name: str) -> list[ApiKey]:
        mine = [k for k in self.read() if k.name == name]
        if not mine:
            known = sorted({k.name for k in self.read()})
            raise ConfigError(f"no key named {name!r} in {self.path}; keys: {', '.join(known) or 'none'}")
        return mine


class KeySettings(Protocol):
    """What the key table is read from (``core.config.Settings``; not imported here: config validates keys
    with this module)."""

    api_keys: list[dict[str, Any]]
    api_key: str | None

    @property
    def keys_path(self) -> Path: ...


KEYS_SETTING = "IMAGESEARCH_API_KEYS"  # core.config's ENV_PREFIX + "API_KEYS"


class KeyRing:
    """The key table of some Settings, re-reading the keys file when it changes (a stat per call)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._file: tuple[object, list[ApiKey]] = (None, [])

    def table(self, settings: KeySettings) -> KeyTable:
        """Every key valid now: the setting's, the keys file's and the legacy single key (an admin key).
        Raises ConfigError when the keys file cannot be read."""
        keys = parse_keys(settings.api_keys, KEYS_SETTING) + self._from_file(settings.keys_path)
        if settings.api_key:
            keys.append(ApiKey(name=ENV_KEY_NAME, scopes=frozenset({ADMIN}), sha256=digest(settings.api_key)))
        return KeyTable(tuple(keys))

    def _from_file(self, path: Path) -> list[ApiKey]:
        try:
            st = path.stat()
            signature: object = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            return []
        with self._lock:
            seen, keys = self._file
            if signature != seen:
                keys = KeyFile(path).read()
                self._file = (signature, keys)
            return keys
