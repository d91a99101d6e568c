"""Content-addressed cache of downscaled JPEGs plus per-ref markers that make downloads resumable."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from core.config import Settings
from utils.atomic import write_bytes_atomic, write_json_atomic
from utils.images import decode_image, encode_jpeg

JPEG_QUALITY = 90
_CACHE_NAME = re.compile(r"[0-9a-f]{2}/[0-9a-f]{64}\.jpg")
_ENTRY_KEYS = ("cache", "width", "height", "bytes")


def cache_key(settings: Settings) -> dict[str, int]:
    """The settings a cached image depends on; a marker written under other values is stale."""
    return {"cache_image_size": settings.cache_image_size, "max_image_pixels": settings.max_image_pixels,
            "max_image_bytes": settings.max_image_bytes}


class ImageCache:
    """``root/ab/<sha256 of original bytes>.jpg`` holds images; ``root/refs/<sha1 of ref>.json`` marks refs done.

    The cache file is written before the marker, both atomically, so a marker always points at a
    complete image and a crash between the two only costs one refetch.
    """

    def __init__(self, root: Path, settings: Settings) -> None:
        self.root = Path(root)
        self._settings = settings
        self._key = cache_key(settings)

    def store(self, data: bytes) -> dict[str, Any]:
        """Decode + downscale ``data`` and write it to the cache. Raises ImageDecodeError."""
        img = decode_image(data, max_pixels=self._settings.max_image_pixels,
                           shorter_side=self._settings.cache_image_size)
        name = hashlib.sha256(data).hexdigest()
        rel = f"{name[:2]}/{name}.jpg"
        # Always rewritten (not skipped when present): a file left by another cache_image_size
        # has the same name, and the bytes are deterministic, so concurrent writers agree.
        write_bytes_atomic(self.root / rel, encode_jpeg(img, quality=JPEG_QUALITY))
        return {"cache": rel, "width": img.width, "height": img.height, "bytes": len(data)}

    def mark(self, ref: str, entry: dict[str, Any], stat: os.stat_result | None = None) -> None:
        """Record that ``ref`` is done; local files also record size and mtime so an edit is noticed."""
        marker = {"ref": ref, **{k: entry[k] for k in _ENTRY_KEYS}, "settings": self._key}
        if stat is not None:
            marker.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
        write_json_atomic(self._marker_path(ref), marker, indent=None)

    def reuse(self, ref: str, stat: os.stat_result | None = None) -> dict[str, Any] | None:
        """The cached entry for ``ref`` when its marker is valid and its image still exists, else None."""
        marker = self._read_marker(ref)
        if marker is None or marker.get("ref") != ref or marker.get("settings") != self._key:
            return None
        if stat is not None and (marker.get("size"), marker.get("mtime_ns")) != (stat.st_size, stat.st_mtime_ns):
            return None
        cache = marker.get("cache")
        if not isinstance(cache, str) or not _CACHE_NAME.fullmatch(cache) or not (self.root / cache).is_file():
            return None
        entry = {k: marker.get(k) for k in _ENTRY_KEYS}
        if not all(isinstance(entry[k], int) for k in ("width", "height", "bytes")):
            return None
        return entry

    def _marker_path(self, ref: str) -> Path:
        name = hashlib.sha1(ref.encode("utf-8", "surrogatepass")).hexdigest()
        return self.root / "refs" / f"{name}.json"

    def _read_marker(self, ref: str) -> dict[str, Any] | None:
        try:
            marker = json.loads(self._marker_path(ref).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return None  # missing or damaged: the ref is simply fetched again
        return marker if isinstance(marker, dict) else None
