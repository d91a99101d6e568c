"""Model registry: built-in model specs plus every ``data/<name>/products.csv`` discovered."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.config import Settings
from core.errors import ConfigError, InvalidModelNameError, UnknownModelError
from core.lexical import DEFAULT_IDENTIFIERS, LexicalConfig
from core.types import IndexType, StoreKind

_NAME_RE = re.compile(r"[a-z0-9_-]{1,64}")
ALL_MODELS = "all"  # reserved: /all/search searches every model


def validate_model_name(name: str) -> str:
    """Return ``name`` if it is a legal model name, else raise InvalidModelNameError."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name == ALL_MODELS:
        raise InvalidModelNameError(str(name))
    return name


@dataclass(frozen=True)
class ModelPaths:
    """Where one model's inputs, cache, outputs and checkpoints live."""

    data: Path
    models: Path
    checkpoints: Path

    @property
    def csv(self) -> Path:
        return self.data / "products.csv"

    @property
    def image_cache(self) -> Path:
        return self.data / "image_cache"

    @property
    def processed_products(self) -> Path:
        return self.models / "processed_products.json"

    @property
    def manifest(self) -> Path:
        return self.models / "manifest.json"

    @property
    def index(self) -> Path:
        return self.models / "index.faiss"

    @property
    def metadata(self) -> Path:
        return self.models / "metadata.jsonl"

    @property
    def embeddings(self) -> Path:
        """Product vectors as indexed (after the fine-tuned head, if one is adopted)."""
        return self.models / "embeddings.npy"

    @property
    def clip_embeddings(self) -> Path:
        """Raw averaged CLIP vectors per product, before any head."""
        return self.models / "clip_embeddings.npy"

    @property
    def head(self) -> Path:
        return self.models / "head.safetensors"

    def checkpoint(self, phase: str) -> Path:
        return self.checkpoints / f"{phase}.json"


@dataclass(frozen=True)
class ModelSpec:
    """A named, searchable catalogue. ``backbone=None`` means the global ``clip_model`` setting."""

    name: str
    display_name: str = ""
    description: str = ""
    categories: tuple[str, ...] = ()
    backbone: str | None = None
    index_type: IndexType | None = None
    store: StoreKind | None = None  # None: the store setting
    currency: str = ""
    url_template: str = ""
    duplicate_threshold: float | None = None  # None: the duplicate_threshold setting
    lexical_columns: tuple[str, ...] | None = None  # extra columns text search finds words in; None: every text one
    identifier_columns: tuple[str, ...] | None = None  # columns whose exact value finds its product first
    builtin: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def paths(self, settings: Settings) -> ModelPaths:
        return ModelPaths(data=settings.data_dir / self.name, models=settings.models_dir / self.name,
                          checkpoints=settings.checkpoints_dir / self.name)

    def backbone_for(self, settings: Settings) -> str:
        return self.backbone or settings.clip_model

    def index_type_for(self, settings: Settings) -> IndexType:
        return self.index_type or settings.index_type

    def store_for(self, settings: Settings) -> StoreKind:
        return self.store or settings.store

    def currency_for(self, settings: Settings) -> str:
        """The ISO code of the catalogue's prices: model.json's ``currency``, else the currency setting."""
        return (self.currency or settings.currency).upper()

    def lexical(self) -> LexicalConfig:
        """What the model's text search finds by words: model.json's ``lexical_columns`` (default every text
        extra column) and ``identifier_columns`` (default sku, barcode, gtin, mpn, ean, upc)."""
        return LexicalConfig(columns=self.lexical_columns,
                             identifiers=DEFAULT_IDENTIFIERS if self.identifier_columns is None
                             else self.identifier_columns)

    def duplicate_threshold_for(self, settings: Settings) -> float:
        """The cosine at or above which two hits are near-duplicates: model.json's ``duplicate_threshold``,
        else IMAGESEARCH_DUPLICATE_THRESHOLD, else what the backbone's own folder asks for (``imagesearch.json``:
        the tiny random CLIP, whose every image lies within 0.9999 of every other), else the default."""
        if self.duplicate_threshold is not None:
            return self.duplicate_threshold
        if settings.duplicate_threshold is not None:
            return settings.duplicate_threshold
        hinted = backbone_hints(self.backbone_for(settings)).get("duplicate_threshold")
        return float(hinted) if isinstance(hinted, int | float) and -1 <= hinted <= 1 else DEFAULT_DUPLICATE_THRESHOLD


# Near-duplicates are the same product photo under several ids (re-encoded, resized): see the README's
# "Near-duplicates" for the figures behind this default.
DEFAULT_DUPLICATE_THRESHOLD = 0.98
BACKBONE_HINTS_FILE = "imagesearch.json"  # written by utils.tiny_clip next to its weights


@functools.lru_cache(maxsize=32)
def backbone_hints(backbone: str) -> dict[str, Any]:
    """Serving hints a local checkpoint folder carries in ``imagesearch.json`` ({} for a hub id, or none)."""
    path = Path(backbone).expanduser() / BACKBONE_HINTS_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(name="general", display_name="General products", builtin=True,
              description="Every kind of product: home, electronics, toys, apparel and more."),
    ModelSpec(name="shirts", display_name="Shirts", builtin=True,
              description="Shirts and tops; may use a fashion-tuned CLIP backbone via model.json."),
)

_MODEL_JSON_KEYS = {"display_name", "description", "categories", "backbone", "index_type", "store", "currency",
                    "url_template", "duplicate_threshold", "lexical_columns", "identifier_columns"}


def read_model_json(path: Path, base: ModelSpec) -> ModelSpec:
    """``base`` with what the model.json at ``path`` says (ConfigError naming the file when it is bad)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    return spec_from_json(raw, path, base)


def spec_from_json(raw: Any, path: Path, base: ModelSpec) -> ModelSpec:
    """``base`` with the keys of a model.json's content ``raw`` (``path`` names it in errors)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    unknown = set(raw) - _MODEL_JSON_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(_MODEL_JSON_KEYS)}")
    updates: dict[str, Any] = {}
    for key in ("display_name", "description", "backbone", "currency", "url_template"):
        if key in raw:
            if not isinstance(raw[key], str):
                raise ConfigError(f"{path}: {key!r} must be a string")
            updates[key] = raw[key]
    if "{id}" not in updates.get("url_template", "{id}"):
        raise ConfigError(f"{path}: 'url_template' must contain {{id}}, e.g. https://shop.example/p/{{id}}")
    if "categories" in raw:
        cats = raw["categories"]
        if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
            raise ConfigError(f"{path}: 'categories' must be a list of strings")
        updates["categories"] = tuple(cats)
    if "duplicate_threshold" in raw:
        value = raw["duplicate_threshold"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not -1 <= value <= 1:
            raise ConfigError(f"{path}: 'duplicate_threshold' must be a cosine between -1 and 1")
        updates["duplicate_threshold"] = float(value)
    for key in ("lexical_columns", "identifier_columns"):
        if key in raw:
            names = raw[key]
            if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
                raise ConfigError(f"{path}: {key!r} must be a list of column names")
            updates[key] = tuple(names)
    if "index_type" in raw:
        try:
            updates["index_type"] = IndexType(raw["index_type"])
        except ValueError:
            raise ConfigError(f"{path}: 'index_type' must be one of {[t.value for t in IndexType]}") from None
    if "store" in raw:
        try:
            updates["store"] = StoreKind(raw["store"])
        except ValueError:
            raise ConfigError(f"{path}: 'store' must be one of {[t.value for t in StoreKind]}") from None
    return replace(base, **updates)


class ModelRegistry:
    """Name -> ModelSpec. Lookup of an unknown or malformed name raises a typed error."""

    def __init__(self, specs: list[ModelSpec] | tuple[ModelSpec, ...]) -> None:
        self._specs = {validate_model_name(s.name): s for s in specs}

    @classmethod
    def discover(cls, settings: Settings) -> ModelRegistry:
        """Built-ins, then every ``data/<name>/products.csv`` (with optional ``model.json``)."""
        specs = {s.name: s for s in BUILTIN_MODELS}
        data_dir = settings.data_dir
        folders = sorted(p for p in data_dir.iterdir() if p.is_dir()) if data_dir.is_dir() else []
        for folder in folders:
            if not _NAME_RE.fullmatch(folder.name) or folder.name == ALL_MODELS:
                continue
            has_csv = (folder / "products.csv").is_file()
            if folder.name not in specs and not has_csv:
                continue
            spec = specs.get(folder.name) or ModelSpec(name=folder.name,
                                                      display_name=folder.name.replace("_", " ").title())
            if (folder / "model.json").is_file():
                spec = read_model_json(folder / "model.json", spec)
            specs[folder.name] = spec
        return cls(list(specs.values()))

    def get(self, name: str) -> ModelSpec:
        validate_model_name(name)
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownModelError(name, self.names()) from None

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._specs)
