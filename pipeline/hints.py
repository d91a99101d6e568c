"""What to tell a merchant whose products.csv is not where the pipeline looks for it."""

from __future__ import annotations

from pathlib import Path

from core.config import Settings


def csv_location_hint(settings: Settings, model: str) -> str:
    """A hint naming where the CSV must go (``data/<model>/products.csv``) and any CSV found nearby
    that looks like the one meant: ``data/<model>.csv``, ``data/products.csv``, or another CSV in the
    model's folder. Empty when nothing nearby suggests a misplaced CSV."""
    data = settings.data_dir
    target = _shown(data / model / "products.csv")
    folder = data / model
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".tsv", ".txt")) \
        if folder.is_dir() else []
    found += [p for p in (data / f"{model}.csv", data / "products.csv") if p.is_file()]
    if found:
        shown = ", ".join(_shown(p) for p in list(dict.fromkeys(found))[:3])
        return f"found {shown}: put the CSV at {target} (the folder name is the model name)"
    if folder.is_dir():
        return f"{_shown(folder)} has no products.csv: put the CSV at {target}"
    return ""


def names_a_new_model(settings: Settings, model: str) -> bool:
    """The merchant made a folder or a CSV named ``model``: a new model is meant, not a typo of another."""
    return (settings.data_dir / model).is_dir() or (settings.data_dir / f"{model}.csv").is_file()


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies inside it (data/x/products.csv)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)
