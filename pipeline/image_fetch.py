"""One image reference's work, the same on every executor: where the ref points (``classify``), a local
file's bytes (``read_local``), and its outcome with the cache entry to write (``prepare``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.image_cache import CachedImage, ImageCache
from pipeline.state import ImageRecord
from utils.http_fetch import FetchError, check_url
from utils.images import ImageDecodeError


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
