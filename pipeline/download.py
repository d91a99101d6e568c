"""Phase 2: fetch every product image (URL or local file), verify it and cache it downscaled, resumably."""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from core.config import Settings
from core.errors import MissingInputError
from core.model_config import ModelPaths
from core.types import PhaseName
from pipeline.base import PhaseResult, PipelineContext, file_digest
from pipeline.image_cache import ImageCache, cache_key
from utils.atomic import read_json, write_json_atomic
from utils.address_guard import AddressGuard
from utils.http_fetch import FetchError, Fetcher, FetchPolicy, check_url
from utils.images import ImageDecodeError

logger = logging.getLogger(__name__)

USER_AGENT = "imagesearch-downloader/1.0 (product image indexing)"
IMAGES_JSON = "images.json"
_DEADLINE_FACTOR = 4  # an attempt may take this many read timeouts in total (slow-drip guard)
_MAX_BACKOFF = 60.0


class ImageStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"


def images_manifest_path(paths: ModelPaths) -> Path:
    """Where this phase records each image ref's status (read by extraction)."""
    return paths.models / IMAGES_JSON


@dataclass(frozen=True)
class _Target:
    """One ref still to fetch: a URL, or a local file with the stat it was checked against."""

    ref: str
    url: str | None = None
    path: Path | None = None
    stat: os.stat_result | None = field(default=None, compare=False)

    @property
    def host(self) -> str:
        return (urlsplit(self.url).hostname or "") if self.url else ""


@dataclass(frozen=True)
class _Outcome:
    ref: str
    entry: dict[str, Any]
    source: str  # downloaded | local | reused | failed
    transient: bool = False


class DownloadPhase:
    """Downloads the union of all products' images into ``data/<m>/image_cache`` and writes images.json."""

    name = PhaseName.DOWNLOAD

    def fingerprint(self, ctx: PipelineContext) -> dict[str, Any]:
        return {"products": file_digest(ctx.paths.processed_products), **cache_key(ctx.settings)}

    def outputs(self, ctx: PipelineContext) -> list[Path]:
        return [images_manifest_path(ctx.paths)]

    def run(self, ctx: PipelineContext) -> PhaseResult:
        refs = _collect_refs(ctx)
        cache = ImageCache(ctx.paths.image_cache, ctx.settings)
        outcomes: dict[str, _Outcome] = {}
        todo: list[_Target] = []
        for ref in refs:
            outcome, target = _triage(ref, ctx.paths.data, cache)
            if target is not None:
                todo.append(target)
            elif outcome is not None:  # _triage gives one or the other
                outcomes[ref] = _logged(outcome)
        logger.info("%s: %d image refs, %d cached, %d to fetch", ctx.model, len(refs),
                    len(refs) - len(todo), len(todo))
        with Fetcher(fetch_policy(ctx.settings)) as fetcher, logging_redirect_tqdm():
            for outcome in _fetch_all(ctx, _interleave_by_host(todo), fetcher, cache):
                outcomes[outcome.ref] = _logged(outcome)
        return _finish(ctx, [outcomes[ref] for ref in refs])


def _collect_refs(ctx: PipelineContext) -> list[str]:
    """Every distinct image ref of every product (``images`` and ``preview_image``), in first-seen order."""
    path = ctx.paths.processed_products
    try:
        doc = read_json(path)
    except FileNotFoundError:
        raise MissingInputError(ctx.model, f"{path} not found; run the validation phase first") from None
    except (OSError, ValueError) as exc:
        raise MissingInputError(ctx.model, f"{path} is unreadable ({exc}); rerun validation") from None
    products = doc.get("products") if isinstance(doc, dict) else None
    if not isinstance(products, list):
        raise MissingInputError(ctx.model, f"{path} has no 'products' list; rerun validation")
    refs: dict[str, None] = {}
    for product in products:
        if not isinstance(product, dict):
            continue
        images = product.get("images")
        for ref in [*(images if isinstance(images, list) else []), product.get("preview_image")]:
            if isinstance(ref, str) and ref:
                refs[ref] = None
    return list(refs)


def _triage(ref: str, data_dir: Path, cache: ImageCache) -> tuple[_Outcome | None, _Target | None]:
    """Settle a ref without any network request when possible: bad ref, or already cached."""
    try:
        target = _classify(ref, data_dir)
    except FetchError as err:
        return _failed(ref, err), None
    entry = cache.reuse(ref, target.stat)
    if entry is None:
        return None, target
    return _Outcome(ref, {"status": ImageStatus.OK.value, **entry}, "reused"), None


def _classify(ref: str, data_dir: Path) -> _Target:
    """A URL target, or a local file inside the model's folder. Re-checked here, whatever validation did."""
    scheme = urlsplit(ref).scheme.lower()
    if scheme:
        check_url(ref)  # raises "bad scheme" for file://, ftp://, data: ...
        return _Target(ref, url=ref)
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
    return _Target(ref, path=path, stat=stat)


def _fetch_all(ctx: PipelineContext, todo: list[_Target], fetcher: Fetcher,
               cache: ImageCache) -> Iterator[_Outcome]:
    """Process ``todo`` on a thread pool, yielding outcomes as they finish (with a progress bar)."""
    bar = tqdm(total=len(todo), desc=f"{ctx.model} images", unit="img", disable=not ctx.progress)
    pool = ThreadPoolExecutor(max_workers=ctx.settings.download_workers, thread_name_prefix="download")
    try:
        futures = [pool.submit(_process, t, fetcher, cache, ctx.settings.max_image_bytes) for t in todo]
        for future in as_completed(futures):
            bar.update(1)
            yield future.result()  # an unexpected error (disk full, a bug) fails the run
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()


def _process(target: _Target, fetcher: Fetcher, cache: ImageCache, max_bytes: int) -> _Outcome:
    """Fetch, verify, cache, then mark one ref. Runs on a worker thread."""
    try:
        entry = cache.store(_read_target(target, fetcher, max_bytes))
    except (FetchError, ImageDecodeError) as err:
        return _failed(target.ref, err)
    cache.mark(target.ref, entry, target.stat)  # last: the ref is done exactly when this exists
    return _Outcome(target.ref, {"status": ImageStatus.OK.value, **entry},
                    "downloaded" if target.url is not None else "local")


def read_ref(ref: str, data_dir: Path, fetcher: Fetcher, max_bytes: int) -> bytes:
    """The bytes of one image reference, as this phase reads it: an http(s) URL through ``fetcher``,
    or a file inside ``data_dir``. Raises FetchError with a reason label."""
    return _read_target(_classify(ref, data_dir), fetcher, max_bytes)


def _read_target(target: _Target, fetcher: Fetcher, max_bytes: int) -> bytes:
    return fetcher.fetch(target.url) if target.url is not None else _read_local(target, max_bytes)


def _read_local(target: _Target, max_bytes: int) -> bytes:
    assert target.path is not None and target.stat is not None
    if target.stat.st_size > max_bytes:
        raise FetchError("too large", f"{target.stat.st_size} bytes > {max_bytes}")
    try:
        with open(target.path, "rb") as fh:
            data = fh.read(max_bytes + 1)  # the file may have grown since it was checked
    except OSError as exc:
        raise FetchError("unreadable file", f"{target.path}: {exc}") from None
    if len(data) > max_bytes:
        raise FetchError("too large", f"more than {max_bytes} bytes")
    return data


def _failed(ref: str, err: FetchError | ImageDecodeError) -> _Outcome:
    entry = {"status": ImageStatus.FAILED.value, "reason": err.reason, "detail": err.detail}
    return _Outcome(ref, entry, "failed", transient=getattr(err, "transient", False))


def _logged(outcome: _Outcome) -> _Outcome:
    if outcome.source == "failed":
        entry = outcome.entry
        logger.warning("image %s failed: %s (%s)%s", outcome.ref, entry["reason"], entry["detail"],
                       ", will retry on rerun" if outcome.transient else "")
    return outcome


def _interleave_by_host(todo: list[_Target]) -> list[_Target]:
    """Round-robin over hosts, so workers blocked on one busy host's limit do not starve the others."""
    queues: dict[str, deque[_Target]] = defaultdict(deque)
    for target in todo:
        queues[target.host].append(target)
    ordered: list[_Target] = []
    while queues:
        for host in list(queues):
            ordered.append(queues[host].popleft())
            if not queues[host]:
                del queues[host]
    return ordered


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


def _finish(ctx: PipelineContext, outcomes: list[_Outcome]) -> PhaseResult:
    """Write images.json and turn the outcomes into the phase's result."""
    sources = Counter(o.source for o in outcomes)
    failed = Counter(o.entry["reason"] for o in outcomes if o.source == "failed")
    transient = sum(o.transient for o in outcomes)
    ok = len(outcomes) - sum(failed.values())
    write_json_atomic(images_manifest_path(ctx.paths), {
        "images": {o.ref: o.entry for o in outcomes},
        "counts": {"ok": ok, "failed": dict(failed)},
    })
    details = {"refs": len(outcomes), "downloaded": sources["downloaded"], "reused": sources["reused"],
               "local": sources["local"], "transient": transient}
    return PhaseResult(ok=ok, failed=failed, details=details, complete=transient == 0)
