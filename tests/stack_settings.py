"""Settings for tests that run the CLIP consumer, the gateway or the legacy adapter against
the session's Tansu broker and moto S3 server (fresh topics per call)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, SecretStr

from consumers.config.settings import (
    ClipSettings,
    KafkaSettings,
    MetricsSettings,
    MilvusSettings,
    S3Settings,
    Settings,
)
from consumers.devstack.launcher import DEV_RPC_FETCH_MAX_WAIT_MS
from consumers.devstack.stack import create_topics
from schemas.topics import Topics
from tests.helpers import jpeg


async def stack_settings(
    bootstrap_servers: str,
    s3: S3Settings,
    milvus_dir: Path,
    model_cache: Path,
    *,
    partitions: int = 2,
    tag: str = "t",
    kafka: dict[str, Any] | None = None,
    **sections: Any,
) -> Settings:
    """Settings against the session's broker and S3 under a new topic prefix (``tag`` + hex),
    its topics created; quick group timeouts, metrics on a free port and random:tiny CLIP
    on the CPU unless ``sections`` say otherwise; ``kafka`` adds KafkaSettings fields."""
    prefix = f"{tag}{uuid.uuid4().hex[:8]}"
    await create_topics(bootstrap_servers, Topics(prefix).all(), partitions=partitions)
    defaults: dict[str, Any] = {
        "metrics": MetricsSettings(port=0),
        "clip": ClipSettings(model="random:tiny", device="cpu", max_records=16),
        "milvus": MilvusSettings(uri=str(milvus_dir / "milvus.db")),
    }
    return Settings(
        _env_file=None,
        kafka=KafkaSettings(
            bootstrap_servers=bootstrap_servers,
            topic_prefix=prefix,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            rpc_fetch_max_wait_ms=int(DEV_RPC_FETCH_MAX_WAIT_MS),
            **(kafka or {}),
        ),
        s3=s3,
        model_cache_dir=model_cache,
        **(defaults | sections),
    )


async def clip_only_settings(
    bootstrap_servers: str, s3: S3Settings, folder: Path, **sections: Any
) -> Settings:
    """random:tiny CLIP on the CPU, every other task disabled, topics under a new prefix."""
    settings = await stack_settings(
        bootstrap_servers,
        s3.model_copy(update={"request_timeout_s": 5.0}),
        folder,
        folder.parent / "models",
        kafka={"max_poll_interval_ms": 90_000},
        # Deadlines that keep a batch's worst case inside the 90 s poll interval.
        **({"milvus": MilvusSettings(uri=str(folder / "milvus.db"), timeout_s=5.0)} | sections),
    )
    others = {
        name: settings.task(name).model_copy(update={"enabled": False})
        for name in settings.task_names()
        if name != "clip"
    }
    return settings.model_copy(update=others)


def settings_env(settings: Settings, sections: tuple[str, ...]) -> dict[str, str]:
    """``IMAGESTREAM_*`` variables that rebuild ``sections`` (and the enabled tasks) of
    ``settings`` in a subprocess."""
    env = {f"IMAGESTREAM_{t.upper()}__ENABLED": "false" for t in settings.task_names()}
    env |= {f"IMAGESTREAM_{t.upper()}__ENABLED": "true" for t in settings.enabled_tasks()}
    for section in sections:
        model: BaseModel = getattr(settings, section)
        for name in type(model).model_fields:
            value = getattr(model, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            text = json.dumps(value) if isinstance(value, list | dict) else str(value)
            env[f"IMAGESTREAM_{section.upper()}__{name.upper()}"] = text
    return env


def small_jpegs(count: int, seed: int) -> list[bytes]:
    """Distinct 48x48 photos-to-be: random smooth colour fields (tiny CLIP looks at 32x32)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        images.append(jpeg(np.kron(coarse, np.ones((12, 12, 1), dtype=np.uint8))))
    return images
