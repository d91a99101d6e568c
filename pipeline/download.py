"""Phase 2: fetch every product image (URL or local file), verify it and cache it downscaled, resumably. The phase
settles what it can without a request, hands the rest to the run's executor (each ref's work is in
pipeline/image_cache.py) and records every outcome in the build state."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tqdm.contrib.logging import logging_redirect_tqdm

from core.errors import MissingInputError
from core.model_config import ModelPaths
from core.types import PhaseName
from pipeline import progress
from pipeline.base import PhaseResult, PipelineContext, write_report
from pipeline.executor import Downloads
from pipeline.image_cache import (ImageCache, ImageStatus, Outcome, Target, cache_key, classify, failed_outcome,
                                  fetch_policy)
from pipeline.state import BuildState, ImageRecord
from utils.http_fetch import FetchError, Fetcher
from utils.images import ShapePolicy
from utils.redact import redact_text

logger = logging.getLogger(__name__)

REPORT_JSON = "download_report.json"
_CHUNK = 5000  # refs triaged, fetched and recorded together (bounded memory at any catalogue size)
_EXAMPLES = 3
_FLUSH_EVERY = 200


def download_report_path(paths: ModelPaths) -> Path:
    """Where this phase writes its failures by reason, with examples."""
    return paths.models / REPORT_JSON


class DownloadPhase:
    """Downloads the union of all staged products' images into ``data/<m>/image_cache``; each ref's
    outcome is recorded in the build state a chunk at a time."""

    name = PhaseName.DOWNLOAD
    fingerprint_after_run = True  # the checkpoint records the failures this run left

    def fingerprint(self, ctx: PipelineContext) -> dict[str, Any]:
        """The staged rows, the cache settings, and what failed: each failed ref, with its local file's
        size and mtime (or its absence). Copying a missing image in, or fixing a broken one, changes
        it, so a rerun retries the refs that failed (transient failures leave the phase unfinished); so does
        letting private addresses through (IMAGESEARCH_ALLOW_PRIVATE_URLS, IMAGESEARCH_FETCH_ALLOWLIST)."""
        return {"staged": ctx.state().get_meta("staged"), **cache_key(ctx.settings),
                "max_aspect_ratio": ctx.settings.max_aspect_ratio,
                "failed": failed_digest(ctx.state(), ctx.paths.data),
                "guard": [ctx.settings.allow_private_urls, ctx.settings.fetch_allowlist]}

    def outputs(self, ctx: PipelineContext) -> list[Path]:
        return [download_report_path(ctx.paths)]

    def run(self, ctx: PipelineContext) -> PhaseResult:
        state = ctx.state()
        if state.get_meta("staged") is None:
            raise MissingInputError(ctx.model, "no validated products yet: run the validation phase first")
        cache = ImageCache(ctx.paths.image_cache, ctx.settings)
        key = json.dumps(cache_key(ctx.settings), sort_keys=True)
        tally = _Tally()
        bar = progress.bar(ctx, f"{ctx.model} images")
        details: dict[str, Any] = {}
        with Fetcher(fetch_policy(ctx.settings)) as fetcher, _logs_above_bars():
            job = Downloads(ctx.paths.data, cache, fetcher, bar, details)
            for refs in state.refs(_CHUNK):
                known = state.images(refs)
                recorder = _Recorder(state, key, tally)
                todo = []
                for ref in refs:
                    outcome, target = _triage(ref, ctx.paths.data, cache, known.get(ref), key,
                                              ctx.settings.image_policy)
                    if target is not None:
                        todo.append(target)
                    elif outcome is not None:
                        recorder.add(_logged(outcome))
                bar.total = (bar.total or 0) + len(refs)
                bar.update(len(refs) - len(todo))
                for outcome in ctx.executor().download(_interleave_by_host(todo), job):
                    recorder.add(_logged(outcome))
                recorder.flush()
        bar.close()
        result = _finish(ctx, tally)
        result.details.update(details)
        return result


def failed_digest(state: BuildState, data_dir: Path) -> str:
    """sha256 over the failed refs, each with its local file's current (size, mtime) or None."""
    h = hashlib.sha256()
    for ref in state.failed_refs():
        h.update(json.dumps([ref, None if urlsplit(ref).scheme else _local_stat(ref, data_dir)]).encode())
        h.update(b"\n")
    return h.hexdigest()


def _local_stat(ref: str, data_dir: Path) -> list[int] | None:
    try:
        target = classify(ref, data_dir)
    except FetchError:
        return None
    return None if target.size is None or target.mtime_ns is None else [target.size, target.mtime_ns]


@contextmanager
def _logs_above_bars() -> Iterator[None]:
    """tqdm's console-logging redirect, keeping the console handler's level (tqdm's drops it, which
    would print every failed image's warning over the summary)."""
    root = logging.getLogger()
    levels = [h.level for h in root.handlers
              if isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)]
    with logging_redirect_tqdm():
        if levels:
            root.handlers[-1].setLevel(levels[0])
        yield


class _Recorder:
    """Commits outcomes to the build state every ``_FLUSH_EVERY`` outcomes or second, so a kill
    loses at most that much finished work (the cached files themselves are already on disk)."""

    def __init__(self, state: BuildState, key: str, tally: _Tally) -> None:
        self.state, self.key, self.tally = state, key, tally
        self.pending: list[Outcome] = []
        self.since = time.monotonic()

    def add(self, outcome: Outcome) -> None:
        self.pending.append(outcome)
        if len(self.pending) >= _FLUSH_EVERY or time.monotonic() - self.since > 1.0:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.state.record([o.record for o in self.pending], self.key)
            self.tally.add(self.pending)
        self.pending, self.since = [], time.monotonic()


@dataclass
class _Tally:
    sources: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    transient: int = 0
    remote_failed: int = 0

    def add(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            self.sources[o.source] += 1
            if o.source == "failed":
                reason = o.record.reason or "?"
                self.failed[reason] += 1
                self.examples.setdefault(reason, [])
                if len(self.examples[reason]) < _EXAMPLES:
                    self.examples[reason].append(o.ref)
                self.transient += o.transient
                self.remote_failed += bool(urlsplit(o.ref).scheme)


def _triage(ref: str, data_dir: Path, cache: ImageCache, known: dict[str, Any] | None,
            key: str, policy: ShapePolicy) -> tuple[Outcome | None, Target | None]:
    """Settle a ref without any network request when possible: bad ref, or already cached (and its
    cached copy's shape still within ``policy``: a copy cached before the policy, or under a looser
    one, is fetched again and judged afresh)."""
    try:
        target = classify(ref, data_dir)
    except FetchError as err:
        return failed_outcome(ref, err), None
    if known is None or known["status"] != ImageStatus.OK.value or known["settings"] != key:
        return None, target
    if policy.refusal(known["width"] or 0, known["height"] or 0, copy=True) is not None:
        return None, target
    if target.size is not None and (known["size"], known["mtime_ns"]) != (target.size, target.mtime_ns):
        return None, target
    if not cache.has(known["cache"]):
        return None, target
    record = ImageRecord(ref=ref, status=ImageStatus.OK.value, cache=known["cache"], width=known["width"],
                         height=known["height"], bytes=known["bytes"], size=known["size"],
                         mtime_ns=known["mtime_ns"])
    return Outcome(ref, record, "reused"), None


def _logged(outcome: Outcome) -> Outcome:
    if outcome.source == "failed":
        r = outcome.record
        logger.warning("image %s failed: %s (%s)%s", outcome.ref, r.reason, r.detail,
                       ", will retry on rerun" if outcome.transient else "")
    return outcome


def _interleave_by_host(todo: list[Target]) -> list[Target]:
    """Round-robin over hosts, so workers blocked on one busy host's limit do not starve the others."""
    queues: dict[str, deque[Target]] = defaultdict(deque)
    for target in todo:
        queues[target.host].append(target)
    ordered: list[Target] = []
    while queues:
        for host in list(queues):
            ordered.append(queues[host].popleft())
            if not queues[host]:
                del queues[host]
    return ordered


def _finish(ctx: PipelineContext, tally: _Tally) -> PhaseResult:
    """Write download_report.json and turn the tally into the phase's result."""
    refs = sum(tally.sources.values())
    ok = refs - sum(tally.failed.values())
    ctx.state().put_meta("downloaded", f"{time.time():.6f}")  # extraction's fingerprint: a new download
    examples = _with_rows(ctx.state(), tally.examples)
    write_report(download_report_path(ctx.paths), {
        "model": ctx.model, "refs": refs, "ok": ok, "failed": dict(tally.failed), "examples": examples,
        "transient": tally.transient})
    details = {"refs": refs, "downloaded": tally.sources["downloaded"], "reused": tally.sources["reused"],
               "local": tally.sources["local"], "transient": tally.transient,
               "failed_local": tally.sources["failed"] - tally.remote_failed, "failed_remote": tally.remote_failed}
    return PhaseResult(ok=ok, failed=tally.failed, details=details, complete=tally.transient == 0,
                       examples=examples)


def _with_rows(state: BuildState, examples: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each example ref as ``row N: <ref>`` (the first CSV row naming it), its credentials redacted, as
    the summary, the report and the checkpoint show it."""
    rows = state.first_rows([ref for refs in examples.values() for ref in refs])
    return {reason: [(f"row {rows[ref]}: " if ref in rows else "") + redact_text(ref)[:300] for ref in refs]
            for reason, refs in examples.items()}
