"""What one ``imagestream loadtest`` run does (kept free of heavy imports for the CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class LoadtestConfig:
    images: int = 640  # per saturation round
    rounds: int = 3  # saturation rounds, the bare benchmark before, between and after them
    model: str = "random:vit-b-32"
    batch: int = 32
    device: str = "auto"
    rate: float | None = None  # the saturation phase: None = every event at once
    latency_seconds: float = 40.0  # 0 = no latency phase
    latency_rate: float | None = None  # default: half the saturation phase's throughput
    bare_batches: int = 5
    legacy_iterations: int = 32  # 0 = no legacy baseline
    legacy_sleep_iterations: int = 3
    legacy_sleep_s: float = 5.0
    milvus: str = "lite"  # lite | server | a Milvus URI
    partitions: int = 4
    consumers: int = 1  # consumer processes in one group (scale-out)
    out: Path = Path(".imagestream") / "loadtest"
    timeout_s: float = 900.0
    model_cache_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    soak: int = 0  # > 0: the soak mode instead, this many events with memory sampled

    def __post_init__(self) -> None:
        if self.soak < 0:
            raise ValueError("--soak must be a number of events")
        if self.rounds < 1 or self.images < 1:
            raise ValueError("--rounds and --images must be at least 1")
        if self.consumers > 1 and self.milvus == "lite":
            raise ValueError(
                "several consumer processes need a Milvus server (--milvus server or a URI): "
                "milvus-lite is one process per database"
            )
