"""What runs on Ray's workers for ``executor=ray``: the download tasks and the embedding actors.

Each reuses the local executor's code for one item (the guarded fetcher, and a ref's work in
pipeline/image_cache.py; the CLIP encoder of core/encoder.py). Nothing here writes to the model's folders
or store: results go back to the driver, which writes them, so workers need no shared filesystem.
Batches are Ray Data numpy batches (a dict of column arrays); a row's outcome crosses as JSON.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from core.config import Settings
from core.errors import ImageSearchError
from pipeline.image_cache import ImageCache, Outcome, Target, classify, failed_outcome, prepare, read_local
from utils.http_fetch import FetchError, Fetcher, FetchPolicy

Batch = dict[str, np.ndarray]
FATAL = "fatal:"  # an embedding error row starting so stops the run: the actor could not load its encoder


def _column(values: list[Any]) -> np.ndarray:
    column = np.empty(len(values), dtype=object)  # bytes and str of any length, never a 2-D char array
    column[:] = values
    return column


def read_local_files(batch: Batch, *, data_dir: str, max_bytes: int) -> Batch:
    """Download stage 1, on the driver's node (it holds the model's folder): each local file's bytes, read
    with the local executor's checks (inside the folder, size cap); a URL passes through untouched."""
    metas, datas = [], []
    for ref in batch["ref"]:
        meta: dict[str, Any] = {}
        data = b""
        if not urlsplit(ref).scheme:
            try:
                target = classify(ref, Path(data_dir))
                data = read_local(target, max_bytes)
                meta = {"size": target.size, "mtime_ns": target.mtime_ns}
            except FetchError as err:
                meta = {"reason": err.reason, "detail": err.detail}
        metas.append(json.dumps(meta))
        datas.append(data)
    return {"ref": batch["ref"], "meta": _column(metas), "data": _column(datas)}


def fetch_and_encode(batch: Batch, *, settings: Settings, policy: FetchPolicy, threads: int) -> Batch:
    """Download stage 2, anywhere in the cluster: fetch each URL through the guarded fetcher (``policy``: the
    phase's, with this task's share of the per-host limit), verify and downscale every image; returns each ref's
    outcome (JSON) and the cache file's bytes (empty if failed)."""
    cache = ImageCache(Path(), settings)  # encodes only; the driver writes the files
    rows = list(zip(batch["ref"], batch["meta"], batch["data"], strict=True))
    with Fetcher(policy) as fetcher, ThreadPoolExecutor(max_workers=threads) as pool:
        done = list(pool.map(lambda row: _fetch_one(row, fetcher, cache), rows))
    return {"outcome": _column([o for o, _ in done]), "jpeg": _column([j for _, j in done])}


def _fetch_one(row: tuple[str, str, bytes], fetcher: Fetcher, cache: ImageCache) -> tuple[str, bytes]:
    ref, meta, data = row
    info = json.loads(meta)
    if "reason" in info:
        outcome, image = failed_outcome(ref, FetchError(info["reason"], info["detail"])), None
    elif urlsplit(ref).scheme:
        outcome, image = prepare(Target(ref, url=ref), lambda: fetcher.fetch(ref), cache)
    else:
        outcome, image = prepare(Target(ref, size=info["size"], mtime_ns=info["mtime_ns"]), lambda: data, cache)
    return json.dumps({**asdict(outcome.record), "source": outcome.source}), image.jpeg if image else b""


def outcome_from_json(text: str) -> Outcome:
    """The driver's side of ``_fetch_one``: the outcome a worker sent back."""
    from pipeline.state import ImageRecord

    fields = json.loads(text)
    source = fields.pop("source")
    return Outcome(fields["ref"], ImageRecord(**fields), source)


def read_cached_files(batch: Batch, *, cache_dir: str) -> Batch:
    """Extraction stage 1, on the driver's node: each cached image's bytes (an error message instead when
    the file cannot be read)."""
    jpegs, errors = [], []
    for rel in batch["cache"]:
        try:
            jpegs.append((Path(cache_dir) / rel).read_bytes())
            errors.append("")
        except OSError as exc:
            jpegs.append(b"")
            errors.append(str(exc) or type(exc).__name__)
    return {"cache": batch["cache"], "jpeg": _column(jpegs), "error": _column(errors)}


class Embedder:
    """Extraction stage 2, one Ray actor: loads the encoder once, then embeds batch after batch exactly as
    the local executor does (the same Preprocessor: decoding and cropping on the actor's CPUs, the same
    model). A cached image that does not decode gets an error message and a zero vector, which the driver
    leaves out and counts; an encoder that does not load fails every row with ``FATAL``, which stops the run."""

    def __init__(self, settings: Settings, backbone: str, threads: int, workers: int) -> None:
        from core.encoder import ClipEncoder
        from pipeline.preprocess import Preprocessor

        self.encoder: ClipEncoder | None = None
        self.policy = settings.image_policy
        self.fatal = ""
        try:
            self.encoder = ClipEncoder(backbone, device=settings.device, precision=settings.precision, threads=threads)
        except ImageSearchError as exc:  # Ray hands the driver an error raised here only as text: every
            # batch carries it instead, and the driver raises it as itself (e.g. the backbone did not load)
            self.fatal = FATAL + json.dumps({"type": type(exc).__name__, "message": exc.message})
        else:
            # the local executor's preprocessing (on threads: Ray's workers must not fork)
            self.pre = Preprocessor[None](self.encoder, workers, policy=self.policy, processes=False)

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["cache"])
        if self.encoder is None:
            return {"cache": batch["cache"], "vector": np.zeros((n, 1), np.float32), "error": _column([self.fatal] * n)}
        errors = [str(e) for e in batch["error"]]
        prepared = self.pre.batch([(str(i), bytes(jpeg)) for i, jpeg in enumerate(batch["jpeg"]) if not errors[i]])
        for key, _, why in prepared.failed:
            errors[int(key)] = why
        vectors = np.zeros((n, self.encoder.dim), dtype=np.float32)
        if prepared.staged is not None:
            vectors[[int(k) for k in prepared.keys]] = self.encoder.encode_staged(prepared.staged)
        return {"cache": batch["cache"], "vector": vectors, "error": _column(errors)}
