"""Content-addressed cache of downscaled JPEGs: ``root/ab/<sha256 of the original bytes>.jpg``.

Which reference maps to which file (and under which settings) is recorded in the build state, not
beside the files: the cache holds one file per distinct image and nothing else.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import Settings
from utils.atomic import write_bytes_atomic
from utils.images import ImageDecodeError, decode_image, encode_jpeg

JPEG_QUALITY = 90
_CACHE_NAME = re.compile(r"[0-9a-f]{2}/[0-9a-f]{64}\.jpg")


def cache_key(settings: Settings) -> dict[str, int]:
    """The settings a cached image depends on; a state row recorded under other values is stale."""
    return {"cache_image_size": settings.cache_image_size, "max_image_pixels": settings.max_image_pixels,
            "max_image_bytes": settings.max_image_bytes}


@dataclass(frozen=True)
class CachedImage:
    """One downscaled image, ready to be written under ``rel`` (``nbytes``: the original's size)."""

    rel: str
    jpeg: bytes
    width: int
    height: int
    nbytes: int

    def entry(self) -> dict[str, Any]:
        return {"cache": self.rel, "width": self.width, "height": self.height, "bytes": self.nbytes}


class ImageCache:
    def __init__(self, root: Path, settings: Settings) -> None:
        self.root = Path(root)
        self._settings = settings

    def store(self, data: bytes) -> dict[str, Any]:
        """Decode + downscale ``data`` and write it to the cache. Raises ImageDecodeError."""
        image = self.encode(data)
        self.write(image)
        return image.entry()

    def encode(self, data: bytes) -> CachedImage:
        """Decode + downscale ``data``, writing nothing (a Ray worker hands the result to the driver,
        which writes it). Raises ImageDecodeError."""
        img = decode_image(data, policy=self._settings.image_policy, shorter_side=self._settings.cache_image_size)
        try:
            jpeg = encode_jpeg(img, quality=JPEG_QUALITY)
        except (OSError, ValueError) as exc:  # whatever PIL cannot write is this image's failure, not the run's
            raise ImageDecodeError("cannot cache image", f"{img.width}x{img.height}: {exc}") from None
        name = hashlib.sha256(data).hexdigest()
        return CachedImage(f"{name[:2]}/{name}.jpg", jpeg, img.width, img.height, len(data))

    def write(self, image: CachedImage) -> None:
        if not _CACHE_NAME.fullmatch(image.rel):  # the name may come back from a Ray worker: never a path
            raise ValueError(f"not a cache file name: {image.rel[:100]!r}")
        # Always rewritten (not skipped when present): a file left by another cache_image_size
        # has the same name, and the bytes are deterministic, so concurrent writers agree.
        write_bytes_atomic(self.root / image.rel, image.jpeg)

    def has(self, rel: object) -> bool:
        """True when ``rel`` names a well-formed cache file that exists."""
        return isinstance(rel, str) and bool(_CACHE_NAME.fullmatch(rel)) and (self.root / rel).is_file()
