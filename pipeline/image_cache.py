"""Content-addressed cache of downscaled JPEGs: ``root/ab/<sha256 of the original bytes>.jpg``, and one image
reference's way into it, the same on every executor: where the ref points (``classify``), a local file's bytes
(``read_local``) or any ref's (``read_ref``, under ``fetch_policy``: the build's download and the API's admin
edits read alike), and its outcome with the cache entry to write (``prepare``).

Which reference maps to which file (and under which settings) is recorded in the build state, not
beside the files: the cache holds one file per distinct image and nothing else.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from core.config import Settings
from pipeline.state import ImageRecord
from utils.atomic import write_bytes_atomic
from utils.http_fetch import AddressGuard, FetchError, Fetcher, FetchPolicy, check_url
from utils.images import ImageDecodeError, decode_image, encode_jpeg

JPEG_QUALITY = 90
USER_AGENT = "imagesearch-downloader/1.0 (product image indexing)"
_DEADLINE_FACTOR = 4  # an attempt may take this many read timeouts in total (slow-drip guard)
_MAX_BACKOFF = 60.0
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


class ImageStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"


@dataclass(frozen=True)
class Target:
    """One ref still to fetch: a URL, or a local file with the size and mtime it was checked against."""

    ref: str
    url: str | None = None
    path: Path | None = None
    size: int | None = None
    mtime_ns: int | None = None

    @property
    def host(self) -> str:
        return (urlsplit(self.url).hostname or "") if self.url else ""


@dataclass(frozen=True)
class Outcome:
    ref: str
    record: ImageRecord
    source: str  # downloaded | local | reused | failed

    @property
    def transient(self) -> bool:
        return self.record.transient


def classify(ref: str, data_dir: Path) -> Target:
    """A URL target, or a local file inside the model's folder. Re-checked here, whatever validation did."""
    scheme = urlsplit(ref).scheme.lower()
    if scheme:
        check_url(ref)  # raises "bad scheme" for file://, ftp://, data: ...
        return Target(ref, url=ref)
    try:
        base = data_dir.resolve()
        path = (base / ref).resolve()
    except (OSError, ValueError, RuntimeError) as exc:
        raise FetchError("bad path", f"{ref[:200]!r}: {exc}") from None
    if not path.is_relative_to(base):
        raise FetchError("path escapes model folder", f"{ref[:200]!r} resolves outside {base}")
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise FetchError("file not found", str(path)) from None
    except OSError as exc:
        raise FetchError("unreadable file", f"{path}: {exc}") from None
    if not path.is_file():
        raise FetchError("not a file", str(path))
    return Target(ref, path=path, size=stat.st_size, mtime_ns=stat.st_mtime_ns)


def read_local(target: Target, max_bytes: int) -> bytes:
    assert target.path is not None and target.size is not None
    if target.size > max_bytes:
        raise FetchError("too large", f"{target.size} bytes > {max_bytes}")
    try:
        with open(target.path, "rb") as fh:
            data = fh.read(max_bytes + 1)  # the file may have grown since it was checked
    except OSError as exc:
        raise FetchError("unreadable file", f"{target.path}: {exc}") from None
    if len(data) > max_bytes:
        raise FetchError("too large", f"more than {max_bytes} bytes")
    return data


def prepare(target: Target, read: Callable[[], bytes], cache: ImageCache) -> tuple[Outcome, CachedImage | None]:
    """Read (``read``), verify and downscale one ref, writing nothing: its outcome, and the cache file to
    write when it worked. The one place a ref's bytes become a cache entry, on either executor."""
    try:
        image = cache.encode(read())
    except (FetchError, ImageDecodeError) as err:
        return failed_outcome(target.ref, err), None
    record = ImageRecord(ref=target.ref, status=ImageStatus.OK.value, cache=image.rel, width=image.width,
                         height=image.height, bytes=image.nbytes, size=target.size, mtime_ns=target.mtime_ns)
    return Outcome(target.ref, record, "downloaded" if target.url is not None else "local"), image


def failed_outcome(ref: str, err: FetchError | ImageDecodeError) -> Outcome:
    record = ImageRecord(ref=ref, status=ImageStatus.FAILED.value, reason=err.reason, detail=err.detail,
                         transient=bool(getattr(err, "transient", False)))
    return Outcome(ref, record, "failed")


def read_ref(ref: str, data_dir: Path, fetcher: Fetcher, max_bytes: int) -> bytes:
    """The bytes of one image reference: an http(s) URL through ``fetcher``, or a file inside ``data_dir``.
    Raises FetchError with a reason label."""
    return _read_target(classify(ref, data_dir), fetcher, max_bytes)


def _read_target(target: Target, fetcher: Fetcher, max_bytes: int) -> bytes:
    return fetcher.fetch(target.url) if target.url is not None else read_local(target, max_bytes)


def fetch_policy(settings: Settings) -> FetchPolicy:
    """The fetch limits the download settings describe (shared with the API's admin edits)."""
    attempts = settings.download_retries + 1
    backoff = sum(min(settings.download_backoff * 2 ** i, _MAX_BACKOFF) for i in range(settings.download_retries))
    return FetchPolicy(timeout=settings.download_timeout, retries=settings.download_retries,
                       backoff=settings.download_backoff, max_redirects=settings.max_redirects,
                       max_bytes=settings.max_image_bytes, per_host=settings.download_per_host,
                       deadline=_DEADLINE_FACTOR * settings.download_timeout * attempts + backoff,
                       user_agent=USER_AGENT,
                       guard=AddressGuard.from_text(settings.allow_private_urls, settings.fetch_allowlist))
