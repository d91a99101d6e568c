"""``executor=ray``: the download and extraction phases' per-item work as Ray Data pipelines.

The phases stay what they are (fingerprints, triage, checkpoints, reports, summaries, progress bars) and
hand their work to this executor as to the local one (pipeline/executor.py); only where an item's work runs
changes. A download is two stages: the driver's node reads the local
files (it holds the model's folder), then CPU tasks anywhere fetch URLs through the guarded fetcher and
verify and downscale every image. Extraction: the driver's node reads the cached images, then actors
(one GPU each where the cluster has GPUs) each load the encoder once and embed batch after batch.
The driver writes everything - cache files, build state, store - as results stream back, a batch at a
time, so a killed run resumes exactly as a local one does. See pipeline/ray_tasks.py for the workers' side.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from core.config import PROJECT_ROOT, Settings
from core.errors import ConfigError, ImageSearchError, require_module
from core.types import Device
from pipeline.executor import Downloads, Embedded, Products, Views
from pipeline.image_cache import CachedImage
from pipeline.ray_tasks import (FATAL, Embedder, fetch_and_encode, outcome_from_json, read_cached_files,
                                read_local_files)

if TYPE_CHECKING:
    from pipeline.image_cache import Outcome, Target
    from pipeline.ray_tasks import Batch

logger = logging.getLogger(__name__)

FEATURE = "IMAGESEARCH_EXECUTOR=ray"
_CPUS_PER_ACTOR = 4  # auto without GPUs: one embedding actor per this many CPUs, its torch threads within
_CPU_BATCH, _GPU_BATCH = 64, 256  # images per actor batch when IMAGESEARCH_RAY_BATCH_SIZE is 0
_READERS = 2  # file-reading tasks at once on the driver's node; I/O only, so they reserve no CPU
_FETCHES_PER_THREAD = 4  # refs per download task = its threads x this
_CODE = ("core", "pipeline", "utils")  # shipped to a cluster's workers (runtime_env py_modules)
_UNREADABLE = "unreadable cached image"  # the reason a view an actor could not embed is counted under


def check_available() -> None:
    """Raise MissingDependencyError (one clear line) when Ray Data cannot be imported."""
    require_module("ray.data", FEATURE, "ray[data]")


@dataclass(frozen=True)
class ActorPlan:
    """How extraction runs: ``count`` actors, each reserving ``cpus`` CPUs and ``gpus`` GPUs."""

    count: int
    cpus: int
    gpus: int
    threads: int


class RaySession:
    """A connection to Ray for one pipeline run: starts a local instance (empty ``ray_address``) or joins a
    cluster; ``close`` shuts Ray down only when this session started it. Ray's own logging goes to the
    program's log files, never to the merchant's console."""

    def __init__(self, settings: Settings) -> None:
        check_available()
        import ray
        import ray.data

        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # else Ray rebuilds a uv env per worker
        _route_ray_logs()
        warnings.filterwarnings("ignore", module=r"ray(\.|$)")  # Ray's tuning hints are not for merchants
        self.started = not ray.is_initialized()
        joined = f"cluster {settings.ray_address}" if settings.ray_address else "local instance"
        self.where = joined if self.started else "existing connection"
        if self.started:
            _init(settings)
            _route_ray_logs()  # init sets its handlers again
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours are enough
        resources = ray.cluster_resources()
        self.cpus, self.gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        self.node_cpus = max((int(r.get("CPU", 0)) for r in nodes), default=1)
        # CPUs beside each GPU on the leanest GPU node: what one GPU actor may reserve for its preprocessing
        self.cpus_per_gpu = min((int(r.get("CPU", 0) // r["GPU"]) for r in nodes if r.get("GPU")), default=1)
        self.here = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}
        logger.info("executor: %s", self.describe())

    def describe(self) -> str:
        gpus = f"{self.gpus} GPU{'s' if self.gpus > 1 else ''}" if self.gpus else "no GPU"
        return f"ray ({self.where}: {self.cpus} CPUs, {gpus})"

    def actor_plan(self, settings: Settings) -> ActorPlan:
        if self.gpus and settings.device != Device.CPU:  # a GPU actor's CPUs decode and crop its batches
            count = min(settings.ray_actors or self.gpus, self.gpus)
            cpus = max(1, min(self.cpus_per_gpu, self.cpus // count) - 1)  # one core left for Ray's own work
            return ActorPlan(count, cpus, 1, settings.torch_threads or 1)
        count = min(settings.ray_actors or max(1, self.cpus // _CPUS_PER_ACTOR), max(1, self.cpus))
        cpus = max(1, min(self.node_cpus, self.cpus // count))
        return ActorPlan(count, cpus, 0, settings.torch_threads or cpus)

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False


def _init(settings: Settings) -> None:
    import ray

    address = settings.ray_address.strip()
    # Ray's console logging at ERROR while it starts (its start-up warnings are noise to a merchant); after
    # that, its records go to our log files only (_route_ray_logs)
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if address:  # a cluster's workers get this project's code from the driver
        kwargs["runtime_env"] = {"py_modules": [str(PROJECT_ROOT / name) for name in _CODE]}
        _check_reachable(address)
    else:  # "local": a fresh instance sized to this machine, never some other Ray found running here
        kwargs["num_cpus"] = len(os.sched_getaffinity(0))
    try:
        ray.init(address=address or "local", **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"cannot join the Ray cluster at {address!r}" if address else "cannot start a local Ray instance"
        raise ConfigError(f"{FEATURE}: {where}: {exc} (IMAGESEARCH_RAY_ADDRESS)") from None


def _check_reachable(address: str) -> None:
    """Ray retries a cluster it cannot reach for minutes, printing every retry: look first, for 5 seconds."""
    target = address.removeprefix("ray://")
    if target == address:  # "auto" or host:port, resolved as ray.init would
        try:
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address(address) or ""
        except ImportError:  # Ray moved it: ray.init alone decides
            return
        except (ConnectionError, ValueError) as exc:
            raise ConfigError(f"{FEATURE}: no Ray cluster at {address!r}: {exc} (IMAGESEARCH_RAY_ADDRESS)") from None
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise ConfigError(f"{FEATURE}: cannot reach the Ray cluster at {address!r}: {exc} "
                          "(IMAGESEARCH_RAY_ADDRESS)") from None


class _LogFilesOnly(logging.Handler):
    """Hands Ray's records to the program's log files (the root logger's file handlers) and nowhere else."""

    def emit(self, record: logging.LogRecord) -> None:
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
                handler.handle(record)


def _route_ray_logs() -> None:
    for name, level in (("ray", logging.WARNING), ("ray.data", logging.INFO)):
        ray_logger = logging.getLogger(name)
        for handler in list(ray_logger.handlers):  # console handlers out; Ray Data's session log file stays
            if isinstance(handler, _LogFilesOnly) or (isinstance(handler, logging.StreamHandler)
                                                      and not isinstance(handler, logging.FileHandler)):
                ray_logger.removeHandler(handler)
        ray_logger.addHandler(_LogFilesOnly())
        ray_logger.setLevel(level)
        ray_logger.propagate = False


def _for_workers(settings: Settings) -> Settings:
    """The settings the workers get: secrets (and where the store lives) stay on the driver."""
    return settings.model_copy(update={"api_key": None, "milvus_token": None, "milvus_uri": ""})


class RayExecutor:
    """The Ray executor (see the module's docstring): its session starts (or joins) Ray on the first work."""

    def __init__(self, settings: Settings) -> None:
        check_available()  # said when the run starts, not halfway
        self.settings = settings
        self._session: RaySession | None = None

    def session(self) -> RaySession:
        if self._session is None:
            self._session = RaySession(self.settings)
        return self._session

    def download(self, todo: list[Target], job: Downloads) -> Iterator[Outcome]:
        """Each ref's outcome as it comes back, its cache file written here. ``download_workers`` and
        ``download_per_host`` stay totals, shared by the download tasks."""
        if not todo:
            return
        session = self.session()
        tasks = max(1, min(self.settings.download_workers, session.cpus))
        job.details.update(executor=session.describe(), ray_tasks=tasks)
        for batch in _results(self._download_dataset(session, todo, job, tasks)):
            for text, jpeg in zip(batch["outcome"], batch["jpeg"], strict=True):
                outcome = outcome_from_json(str(text))
                r = outcome.record
                if jpeg:
                    assert r.cache and r.width and r.height and r.bytes is not None
                    job.cache.write(CachedImage(r.cache, bytes(jpeg), r.width, r.height, r.bytes))
                job.bar.update(1)
                yield outcome

    def _download_dataset(self, session: RaySession, todo: list[Target], job: Downloads, tasks: int) -> Any:
        """Local files read on the driver's node, then fetched (URLs), verified and downscaled by ``tasks`` CPU
        tasks anywhere, each with a share of the download threads and of the per-host limit."""
        import ray.data

        settings = self.settings
        threads = max(1, settings.download_workers // tasks)
        per_task = threads * _FETCHES_PER_THREAD
        policy = replace(job.fetcher.policy, per_host=max(1, settings.download_per_host // tasks))
        ds = _items("ref", [t.ref for t in todo], per_task).map_batches(
            partial(read_local_files, data_dir=str(job.data_dir), max_bytes=settings.max_image_bytes),
            batch_size=per_task, num_cpus=0, label_selector=session.here,
            compute=ray.data.TaskPoolStrategy(size=_READERS))
        return ds.map_batches(
            partial(fetch_and_encode, settings=_for_workers(settings), policy=policy, threads=threads),
            batch_size=per_task, num_cpus=1, compute=ray.data.TaskPoolStrategy(size=tasks))

    def embed(self, views: Views) -> Generator[tuple[Embedded, Products]]:
        """Every view without a vector, batches coming back in whatever order; the products, once all are in."""
        todo, products = views.unordered()
        if todo:
            session = self.session()
            plan = session.actor_plan(self.settings)
            views.details.update(executor=session.describe(), ray_actors=plan.count,
                                 ray_device="gpu" if plan.gpus else "cpu")
            views.bar.total = len(todo)
            for batch in _results(self._embedding_dataset(session, plan, todo, views)):
                _raise_fatal(batch["error"])
                ok = batch["error"] == ""
                failed = [(str(rel), _UNREADABLE, str(error))
                          for rel, error in zip(batch["cache"][~ok], batch["error"][~ok], strict=True)]
                yield Embedded([str(c) for c in batch["cache"][ok]], batch["vector"][ok], failed), []
        yield Embedded([], np.zeros((0, 1), np.float32), []), products  # every view is in: write every product

    def _embedding_dataset(self, session: RaySession, plan: ActorPlan, todo: list[str], views: Views) -> Any:
        """Cached images read on the driver's node, then embedded by ``plan.count`` actors."""
        import ray.data

        settings = self.settings
        batch = settings.ray_batch_size or (_GPU_BATCH if plan.gpus else _CPU_BATCH)
        ds = _items("cache", todo, batch).map_batches(
            partial(read_cached_files, cache_dir=str(views.image_cache)), batch_size=batch,
            num_cpus=0, label_selector=session.here, compute=ray.data.TaskPoolStrategy(size=_READERS))
        with warnings.catch_warnings():  # max_restarts goes through Ray's deprecated **ray_remote_args
            warnings.simplefilter("ignore", DeprecationWarning)
            # No actor restarts: a lost actor fails the run and the rerun resumes. (Restarting actors whose
            # constructor arguments live in the object store also makes Ray print a warning on the console.)
            return ds.map_batches(Embedder, fn_constructor_kwargs={
                "settings": _for_workers(settings), "backbone": views.backbone, "threads": plan.threads,
                "workers": settings.preprocess_workers or plan.cpus},
                batch_size=batch, num_cpus=plan.cpus, num_gpus=plan.gpus,
                compute=ray.data.ActorPoolStrategy(size=plan.count), max_restarts=0)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


def _items(column: str, values: list[str], batch: int) -> Any:
    """A dataset of one string column, in blocks of about ``batch`` rows (so every task slot gets work)."""
    import ray.data

    return ray.data.from_items([{column: v} for v in values], override_num_blocks=max(1, -(-len(values) // batch)))


def _raise_fatal(errors: np.ndarray) -> None:
    """An embedding actor could not start (see Embedder): its error, raised here as the type it had."""
    import core.errors

    fatal = next((str(e) for e in errors if str(e).startswith(FATAL)), None)
    if fatal is None:
        return
    info = json.loads(fatal.removeprefix(FATAL))
    cls = getattr(core.errors, info["type"], None)
    if isinstance(cls, type) and issubclass(cls, ImageSearchError) and cls.__init__ is ImageSearchError.__init__:
        raise cls(info["message"])
    raise ImageSearchError(info["message"])


def _results(ds: Any) -> Iterator[Batch]:
    """The dataset's output blocks as they finish, in whatever order."""
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")
