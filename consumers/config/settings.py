"""One settings tree, read from ``IMAGESTREAM_*`` variables and ``.env``.

Nested sections use a double underscore: ``IMAGESTREAM_KAFKA__BOOTSTRAP_SERVERS``,
``IMAGESTREAM_CLIP__MODEL``. ``imagestream up`` writes the endpoints of the embedded
stack to ``.imagestream/stack.env``, read after ``.env`` so that CLI commands run
beside a live embedded stack find it without flags.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumers.config.task_settings import (
    RUNTIME_DIR,
    WEARABLE,
    CaptionSettings,
    ClassifySettings,
    ClipSettings,
    Dinov2Settings,
    FaceSettings,
    LabelsSettings,
    OcrSettings,
    PeopleSettings,
    SearchSettings,
    TaskSettings,
    ZeroShotSettings,
)
from consumers.gateway.api_keys import AuthSettings

# The per-task sections live in task_settings.py and are imported from here as before.
__all__ = [
    "RUNTIME_DIR", "STACK_ENV", "WEARABLE", "CaptionSettings", "ClassifySettings",
    "ClipSettings", "DecodeSettings", "DeliverySettings", "Dinov2Settings", "FaceSettings",
    "GatewaySettings", "KafkaSettings", "LabelsSettings", "LegacySettings",
    "MetricsSettings", "MilvusSettings", "OcrSettings", "PeopleSettings", "S3Settings",
    "SearchSettings", "Settings", "TaskSettings", "ZeroShotSettings", "get_settings",
]  # fmt: skip
STACK_ENV = RUNTIME_DIR / "stack.env"


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = Field(default="", description="Prepended to every topic name.")
    partitions: int = Field(default=4, ge=1, description="Partitions when topics are created.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    enable_idempotence: bool = Field(
        default=False,
        description="On against Apache Kafka; the embedded Tansu broker rejects it.",
    )
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_ms: int = Field(
        default=30_000, description="The embedded stack uses 6000: Tansu holds a join half of it."
    )
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    rpc_fetch_max_wait_ms: int = Field(
        default=500,
        ge=0,
        description="How long the gateway-RPC subscriber's fetch waits on an empty topic. "
        "Kafka answers a waiting fetch as soon as a request arrives; the embedded stack "
        "uses 50, since Tansu holds a fetch over several partitions for the whole wait.",
    )


class S3Settings(BaseModel):
    endpoint_url: str | None = Field(default=None, description="MinIO/moto URL; unset = AWS.")
    region: str = "us-east-1"
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    bucket: str = Field(default="images", description="Where `imagestream ingest` uploads.")
    allowed_buckets: list[str] = Field(
        default_factory=lambda: ["images"], description="Only these buckets are read."
    )
    max_object_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    max_concurrency: int = Field(default=16, ge=1)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    request_timeout_s: float = Field(
        default=20.0,
        gt=0,
        description="The most one read may take, its wait for a connection slot, retries "
        "and body included; then S3 counts as unavailable (the batch is retried).",
    )


class MilvusSettings(BaseModel):
    uri: str = Field(
        default=str(RUNTIME_DIR / "milvus.db"),
        description="A local path = milvus-lite (one process); http://host:19530 = a server.",
    )
    token: SecretStr | None = None
    index_type: str = Field(default="AUTOINDEX", description="HNSW/IVF_FLAT/... on a server.")
    timeout_s: float = Field(
        default=10.0, gt=0, description="Each Milvus call's deadline; then it is unavailable."
    )


class DecodeSettings(BaseModel):
    max_pixels: int = Field(default=50_000_000, ge=1, description="Refuse larger images.")
    max_side: int = Field(
        default=1024, ge=32, description="Downscale larger images before preprocessing."
    )
    threads: int = Field(default=4, ge=1, description="Decode/preprocess thread pool size.")


class DeliverySettings(BaseModel):
    """Retries, replays and shutdown of a consumer's micro-batches (see
    consumers/worker/delivery.py)."""

    retry_delays_s: list[float] = Field(
        default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0],
        description="Backoff between retries of a batch after a transient failure.",
    )
    replay_pause_s: float = Field(
        default=5.0, ge=0, description="Pause before a batch whose retries ran out is replayed."
    )
    graceful_timeout_s: float = Field(
        default=20.0,
        gt=0,
        description="How long SIGTERM or a revoke waits for the batches in flight to finish.",
    )
    dlq: bool = Field(default=True, description="Publish bad input to the images DLQ topic.")
    prefetch: Literal["decode", "publish", "fetch", "off", "auto"] = Field(
        default="decode",
        description="When the next batch starts (consumers/worker/prefetch.py): decode = as this "
        "one is decoded, beside its model call; publish = as this one's model call ends, "
        "beside its Milvus writes, publish and commit (2% less throughput on the CPU, "
        "~100 ms less latency at half load: docs/performance.md); fetch = as this one is "
        "fetched (the next is decoded later); off = once this one is committed. auto = "
        "decode.",
    )

    def retry_budget_s(self) -> float:
        return sum(self.retry_delays_s) + self.replay_pause_s


class LegacySettings(BaseModel):
    """The adapter for seed 000's polling workers (consumers/legacy/)."""

    polling_url: str | None = Field(
        default=None,
        description="The old POLLING_URL; when set, `imagestream up` runs the adapter.",
    )
    model_names: dict[str, str] = Field(
        default_factory=lambda: {"clip": "clip", "face": "face"},
        description="Task -> the MODEL_NAME its jobs are polled under (enabled tasks only).",
    )
    idle_sleep_s: float = Field(default=2.0, ge=0, description="Pause after an empty poll.")
    jitter_s: float = Field(default=1.0, ge=0, description="Random extra pause, 0 to this.")
    http_timeout_s: float = Field(default=10.0, gt=0, description="Polls and downloads.")
    result_ids: int = Field(
        default=20, ge=1, description="Ids per callback, the image's own first (old n_results)."
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts s3_path URLs other than S3's may be downloaded from (or *.domain).",
    )
    download_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs s3_path downloads may reach although private or loopback.",
    )
    callback_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs callbacks may reach although private or loopback.",
    )
    allowed_networks: list[str] = Field(
        default_factory=list, description="Deprecated: callbacks only, as callback_networks."
    )
    staging_prefix: str = Field(default="legacy", description="Key prefix of staged downloads.")
    group_id: str | None = Field(
        default=None,
        min_length=1,
        description="Default: imagestream-legacy-callbacks, after KAFKA__TOPIC_PREFIX.",
    )
    callback_attempts: int = Field(default=8, ge=1, description="Tries per callback.")
    callback_backoff_s: float = Field(default=0.5, gt=0, description="First retry delay.")
    callback_backoff_max_s: float = Field(default=8.0, gt=0, description="Longest retry delay.")
    callback_concurrency: int = Field(default=16, ge=1)
    # Outages wait: a source or a backend that is down delays answers, it does not fail them.
    source_wait_s: float = Field(
        default=900.0,
        ge=0,
        description="How long a job whose image source (S3, the download URL) is down is "
        "retried before its backend is answered `unavailable`.",
    )
    source_backoff_s: float = Field(default=1.0, gt=0, description="First source retry delay.")
    source_backoff_max_s: float = Field(default=30.0, gt=0, description="Longest one.")
    source_waiting_jobs: int = Field(
        default=256, ge=1, description="Jobs waiting for their source at once; then polls pause."
    )
    resend_backoff_s: float = Field(
        default=30.0, gt=0, description="Pause before a failed callback is sent again (doubling)."
    )
    resend_backoff_max_s: float = Field(default=300.0, gt=0, description="Longest such pause.")
    resend_for_s: float = Field(
        default=86_400.0,
        ge=0,
        description="How long after its first failure the adapter re-sends a callback; "
        "later ones only by `imagestream legacy resend`.",
    )


class GatewaySettings(BaseModel):
    """The HTTP gateway (consumers/gateway/)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, description="0 = any free port.")
    request_timeout_s: float = Field(
        default=30.0, gt=0, description="Encoder calls and ?wait=true; then 504."
    )
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    max_items: int = Field(default=32, ge=1, description="Images plus texts per request.")
    max_text_chars: int = Field(default=2000, ge=1)
    results_cache_images: int = Field(
        default=10_000, ge=1, description="Images whose results this gateway keeps in memory."
    )
    results_lookback_s: float = Field(
        default=3600.0, ge=0, description="At start, read results this far back."
    )
    staging_prefix: str = Field(default="gateway", description="Key prefix of uploads.")
    auth: AuthSettings = Field(default_factory=AuthSettings)


class MetricsSettings(BaseModel):
    port: int = Field(default=9464, description="/metrics, /healthz, /readyz; 0 = off.")
    host: str = Field(default="127.0.0.1", description="0.0.0.0 where Prometheus scrapes it.")
    poll_interval_s: float = Field(
        default=10.0, gt=0, description="How often consumer lag and GPU memory are refreshed."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="IMAGESTREAM_",
        env_nested_delimiter="__",
        env_file=(".env", str(STACK_ENV)),
        extra="ignore",
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    milvus: MilvusSettings = Field(default_factory=MilvusSettings)
    decode: DecodeSettings = Field(default_factory=DecodeSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    zero_shot: ZeroShotSettings = Field(default_factory=ZeroShotSettings)
    legacy: LegacySettings = Field(default_factory=LegacySettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    clip: ClipSettings = Field(default_factory=ClipSettings)
    face: FaceSettings = Field(default_factory=FaceSettings)
    dinov2: Dinov2Settings = Field(default_factory=Dinov2Settings)
    caption: CaptionSettings = Field(default_factory=CaptionSettings)
    ocr: OcrSettings = Field(default_factory=OcrSettings)
    labels: LabelsSettings = Field(default_factory=LabelsSettings)
    classify: ClassifySettings = Field(default_factory=ClassifySettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    model_cache_dir: Path = Field(
        default=Path.home() / ".cache" / "imagestream" / "models",
        description="Where random:<preset> models are built and saved.",
    )
    cpu_workers: int = Field(
        default=0,
        ge=0,
        description="CPU inference: split each batch over this many single-threaded "
        "workers (0 = one per torch thread, i.e. per core; 1 = one call on torch's threads).",
    )
    malloc_keep_mb: int = Field(
        default=256,
        ge=0,
        description="glibc only: memory a model call frees stays in the process for the "
        "next batch instead of going back to the kernel: blocks up to 32 MiB come from "
        "the heap, and up to this much stays free at the top of each heap "
        "(consumers/ops/allocator.py; 0 = glibc's defaults).",
    )
    blas_threads: int = Field(
        default=1,
        ge=0,
        description="Threads numpy's BLAS (OpenBLAS) may use in a consumer process "
        "(consumers/ops/threads.py; 0 = its default, one per core). The consumer's own pools are "
        "its parallelism, and an idle OpenBLAS worker spins on a core after every call.",
    )
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _heads_follow_clip(self) -> Settings:
        for section in (self.labels, self.classify):
            if not section.model:
                section.model = self.clip.model
                if "fallback_model" not in section.model_fields_set:
                    section.fallback_model = self.clip.fallback_model
                for name in ("device", "engine", "precision"):
                    if name not in section.model_fields_set:
                        setattr(section, name, getattr(self.clip, name))
        return self

    @model_validator(mode="after")
    def _retries_fit_the_poll_interval(self) -> Settings:
        # A batch that outlives max_poll_interval_ms gets its consumer thrown out of the
        # group, and the batch replays elsewhere, for ever: its worst case must fit.
        worst, limit = self.worst_batch_s(), self.kafka.max_poll_interval_ms / 1000
        if worst > limit:
            attempts = len(self.delivery.retry_delays_s) + 1
            raise ValueError(
                f"a batch may take {worst:.0f} s during an outage ({attempts} attempts x "
                f"(s3.request_timeout_s {self.s3.request_timeout_s:g} + milvus.timeout_s "
                f"{self.milvus.timeout_s:g}) + retry delays and replay pause "
                f"{self.delivery.retry_budget_s():g}), more than "
                f"kafka.max_poll_interval_ms ({limit:.0f} s): shorten them or raise the interval"
            )
        return self

    def worst_batch_s(self) -> float:
        """How long one batch may keep its consumer from polling while S3 or Milvus is
        down: each attempt waits at most one S3 read deadline (reads run concurrently,
        each bounded from its start) and one Milvus call deadline (the first call that
        times out ends the attempt), then the retry delays and the replay pause. The
        model's own time comes on top: it is not an outage, and is seconds per batch."""
        attempts = len(self.delivery.retry_delays_s) + 1
        per_attempt = self.s3.request_timeout_s + self.milvus.timeout_s
        return attempts * per_attempt + self.delivery.retry_budget_s()

    def task(self, name: str) -> TaskSettings:
        section = getattr(self, name, None)
        if not isinstance(section, TaskSettings):
            raise KeyError(f"no task named {name!r}")
        return section

    def task_names(self) -> list[str]:
        return [
            name
            for name, field in type(self).model_fields.items()
            if isinstance(field.annotation, type) and issubclass(field.annotation, TaskSettings)
        ]

    def enabled_tasks(self) -> list[str]:
        return [name for name in self.task_names() if self.task(name).enabled]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
