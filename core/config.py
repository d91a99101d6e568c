"""The one Settings object (environment variables prefixed IMAGESEARCH_, or a .env file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import ConfigError
from core.types import Device, Executor, IndexType, Metric, Precision, StoreKind
from utils.images import ShapePolicy

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
ENV_PREFIX = "IMAGESEARCH_"


class Settings(BaseSettings):
    """Every knob of the platform. Built once at the edge (a ``run_*.py``) and passed down."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore",
                                      validate_default=True)

    # where things live
    root: Path = Field(PROJECT_ROOT, description="folder holding data/ models/ checkpoints/ logs/")

    # encoder
    clip_model: str = Field(DEFAULT_CLIP_MODEL, min_length=1,
                            description="hub id or local folder of a CLIP-family checkpoint")
    device: Device = Field(Device.AUTO, description="auto | cpu | cuda")
    precision: Precision = Field(Precision.AUTO, description="auto (bf16 where fast, else fp32) | fp32 | bf16 | fp16")
    torch_threads: int = Field(0, ge=0, le=256, description="torch intra-op threads (0 = all cores)")
    batch_size: int = Field(0, ge=0, le=4096, description="images per forward pass in extraction "
                                                          "(0 = by device: 32 on a CPU, 256 on a GPU)")
    preprocess_workers: int = Field(0, ge=0, le=256, description="worker processes decoding and resizing images "
                                                                 "in the download and extraction phases "
                                                                 "(0 = one per core)")

    # download
    download_workers: int = Field(8, ge=1, le=128, description="concurrent image downloads")
    download_per_host: int = Field(4, ge=1, le=64, description="concurrent downloads to one host")
    download_timeout: float = Field(10.0, gt=0, le=300, description="seconds per request (connect and read)")
    download_retries: int = Field(3, ge=0, le=10, description="retries on 429/5xx/connection errors")
    download_backoff: float = Field(0.5, ge=0, le=60, description="first retry delay in seconds, doubled each retry")
    max_redirects: int = Field(5, ge=0, le=30, description="redirects followed per image")
    allow_private_urls: bool = Field(
        False, description="let server-side fetches reach loopback, private and link-local addresses "
                           "(local development and tests only)")
    fetch_allowlist: str = Field(
        "", max_length=10_000,
        description="hosts or networks (CIDR) fetches may reach even when private, comma separated")
    max_image_bytes: int = Field(20_000_000, ge=1024, description="largest image file accepted, bytes")
    max_image_pixels: int = Field(40_000_000, ge=1024, description="largest image accepted, width x height")
    cache_image_size: int = Field(384, ge=32, le=4096, description="shorter side of cached images, px")
    max_images_per_product: int = Field(10, ge=1, le=100, description="views kept per product")
    shopify_include_inactive: bool = Field(
        False, description="index a Shopify export's draft, archived and unpublished products too "
                           "(by default they are skipped, with the reason in the validation report)")

    # index
    index_type: IndexType = Field(IndexType.AUTO, description="auto | flat | hnsw | ivf | ivfsq | ivfpq")
    metric: Metric = Field(Metric.COSINE, description="cosine (inner product) | euclidean (L2)")
    flat_max_products: int = Field(20_000, ge=1, description="auto: exact flat index up to this size")
    hnsw_max_products: int = Field(300_000, ge=1, description="auto: HNSW up to this size, IVF beyond")
    ivfsq_min_products: int = Field(1_200_000, ge=1,
                                    description="auto: IVF-SQ8 (8-bit scalar codes, a quarter of the raw vectors) "
                                                "beyond this size, IVF-Flat up to it")
    ivfpq_min_products: int = Field(12_000_000, ge=1,
                                    description="auto: IVF-PQ (OPQ, re-ranked from stored vectors) beyond this size")
    recall_target: float = Field(0.95, gt=0, le=1,
                                 description="auto-tuning: recall@10 that nprobe / efSearch are raised to reach")
    tune_latency_ms: float = Field(10.0, gt=0, le=10_000,
                                   description="auto-tuning: per-query latency budget while raising nprobe / efSearch")
    filter_exact_max: int = Field(10_000, ge=0, le=1_000_000,
                                  description="filters admitting at most this many products are searched exactly")
    words_ranked_max: int = Field(4096, ge=0, le=1_000_000,
                                  description="text search: words held by at most this many products are ranked by "
                                              "BM25; more holders are ranked by their picture")
    max_filter_columns: int = Field(64, ge=0, le=100_000,
                                    description="extra columns per model that become filterable (each is indexed, "
                                                "which every write pays for); later new ones are kept as plain "
                                                "metadata")
    hnsw_m: int = Field(32, ge=4, le=256, description="HNSW graph degree")
    hnsw_ef_search: int = Field(64, ge=1, le=4096, description="HNSW search breadth")
    ivf_nprobe: int = Field(16, ge=1, le=65536, description="IVF lists probed per query")

    # past one machine: the catalogue in Milvus, builds on Ray (requirements-scale.txt)
    store: StoreKind = Field(StoreKind.LOCAL, description="local (SQLite + FAISS under models/<m>/) | milvus "
                                                          "(model.json's store wins)")
    milvus_uri: str = Field("", max_length=2000,
                            description="a file path runs milvus-lite embedded (default: models/milvus.db); "
                                        "http://host:19530 reaches a Milvus standalone or cluster")
    milvus_token: str | None = Field(None, description="Milvus credentials (user:password or an API key); "
                                                       "never printed")
    milvus_prefix: str = Field("imagesearch_", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$",
                               description="prefix of the per-model collection names")
    milvus_consistency: Literal["session", "strong"] = Field(
        "session", description="session: a process reads its own writes at once and other processes' within about "
                               "a second; strong: every read waits for every write (a server time tick, 200 ms)")
    executor: Executor = Field(Executor.LOCAL, description="local | ray: where the download and extraction "
                                                           "phases run")
    ray_address: str = Field("", max_length=2000,
                             description="Ray cluster to join (ray://host:10001 or auto); empty starts a local one")
    ray_batch_size: int = Field(0, ge=0, le=4096, description="executor=ray: images per forward pass on each "
                                                              "embedding actor (0 = 64 on CPU actors, 256 on GPU ones)")
    ray_actors: int = Field(0, ge=0, le=1024,
                            description="executor=ray: embedding actors, each loading the encoder once (0 = one per "
                                        "GPU, or one per 4 CPUs on a cluster without GPUs)")

    # relevance: near-duplicates collapsed in search results (model.json's duplicate_threshold wins)
    duplicate_threshold: float | None = Field(
        None, ge=-1, le=1, description="cosine at or above which two hits are near-duplicates, collapsed into one "
                                       "(dedupe=true); unset: what the backbone's folder asks for, else 0.98")

    # quality: evaluation and fine-tuning (run_training.py --evaluate / --finetune)
    eval_max_queries: int = Field(
        2000, ge=1, description="evaluation: products queried by their preview (a seeded sample beyond this)")
    robustness_max_queries: int = Field(200, ge=1,
                                        description="evaluation: products queried with each perturbed preview")
    finetune_head: Literal["linear", "mlp"] = Field("linear",
                                                    description="projection head: linear or one-hidden-layer MLP")
    finetune_margin: float = Field(0.2, gt=0, le=2, description="triplet loss margin (distance between unit vectors)")
    finetune_epochs: int = Field(60, ge=1, le=10_000, description="most epochs of head training")
    finetune_patience: int = Field(6, ge=1, le=1000,
                                   description="epochs without validation improvement before stopping")
    finetune_lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate")
    finetune_weight_decay: float = Field(1e-4, ge=0, le=1, description="Adam weight decay")
    finetune_batch_categories: int = Field(16, ge=2, le=1024, description="P: categories per P x K batch")
    finetune_batch_per_category: int = Field(4, ge=2, le=256, description="K: products per category in a batch")
    seed: int = Field(0, ge=0, description="seed for sampling, splits and training")

    # API / UI
    api_key: str | None = Field(None, description="an admin key for every admin route (header X-API-Key); with "
                                                  "no key configured at all, admin routes are disabled")
    api_keys: list[dict[str, Any]] = Field(
        default_factory=list, description="more keys, as JSON: [{\"name\": ..., \"scopes\": [\"write:shoes\"], "
                                          "\"sha256\": <the key's SHA-256>}] (never the key itself)")
    api_keys_file: Path | None = Field(None, description="the keys file run_keys.py manages, re-read when it changes "
                                                         "(default: checkpoints/api_keys.json)")
    backup_dir: Path | None = Field(None, description="where backups go by default (default: backups/ under the root)")
    max_upload_bytes: int = Field(10_000_000, ge=1024, description="largest upload accepted by the API, bytes")
    api_url: str = Field("http://127.0.0.1:8000", description="where the UI finds the API")
    currency: str = Field("USD", pattern=r"^([A-Za-z]{3})?$",
                          description="ISO code of prices in catalogues whose model.json names none (blank: none)")

    # API: hostile and slow clients
    header_timeout: float = Field(10.0, gt=0, le=600,
                                  description="seconds a connection may take to send a request's headers")
    body_timeout: float = Field(30.0, gt=0, le=3600, description="seconds a client may take to send a whole body")
    max_connections: int = Field(512, ge=1, le=100_000,
                                 description="open connections; beyond it a new one gets 503 + Retry-After")
    max_inflight_searches: int = Field(32, ge=1, le=10_000,
                                       description="searches served at once; the excess gets 503 + Retry-After")
    max_admin_body_bytes: int = Field(1_000_000, ge=1024, description="largest admin JSON body, bytes")
    admin_failures_per_minute: int = Field(
        10, ge=1, le=10_000, description="failed X-API-Key attempts per client address per minute before 429")
    max_aspect_ratio: float = Field(20.0, ge=1, le=1000,
                                    description="images more elongated than this are refused wherever they enter "
                                                "(search, explain, admin upsert: 400; a build: a reported failure)")

    # explanations, query log, background jobs
    explain_cache_max_files: int = Field(5000, ge=10, le=10_000_000,
                                         description="explanation files kept per model (the oldest go first)")
    explain_cache_max_bytes: int = Field(64_000_000, ge=100_000,
                                         description="bytes of explanation files kept per model (the oldest go "
                                                     "first)")
    query_log_enabled: bool = Field(True, description="record searches (no images) in logs/queries.db")
    query_log_retention_days: int = Field(30, ge=1, le=3650, description="days of the query log kept")
    job_queue_max: int = Field(4, ge=1, le=1000,
                               description="background jobs waiting per model; beyond it a new one gets 429 + "
                                           "Retry-After")
    job_max_attempts: int = Field(3, ge=1, le=20,
                                  description="runs of a background job interrupted by an API restart before it fails")

    @property
    def image_policy(self) -> ShapePolicy:
        """The one image-shape policy every image entry point applies (from the header, before decoding)."""
        return ShapePolicy(max_pixels=self.max_image_pixels, max_aspect=self.max_aspect_ratio)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def query_log_path(self) -> Path:
        return self.logs_dir / "queries.db"

    @property
    def jobs_path(self) -> Path:
        return self.checkpoints_dir / "jobs.db"

    @property
    def keys_path(self) -> Path:
        return self._under_root(self.api_keys_file) or self.checkpoints_dir / "api_keys.json"

    @property
    def backups_dir(self) -> Path:
        return self._under_root(self.backup_dir) or self.root / "backups"

    def _under_root(self, path: Path | None) -> Path | None:
        return None if path is None else path if path.is_absolute() else self.root / path

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from core.keys import parse_keys

        try:
            parse_keys(value, "keys")
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        return value


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment (+ overrides), turning a bad value into a ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            problems.append(f"{ENV_PREFIX}{field.upper()}: {err['msg']}")
        raise ConfigError("invalid setting " + "; ".join(problems)) from None
