"""Long-running commands: ``consume`` (production), ``up`` (embedded stack) and ``demo``.

``up`` and ``demo`` start the embedded servers (Tansu broker, moto S3 server) on free
loopback ports, point this process's settings at them, and run every enabled task's
consumer in this process beside milvus-lite (which allows one process per data folder).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from consumers.config.settings import STACK_ENV, Settings
from consumers.devstack.stack import EmbeddedStack
from consumers.gateway.api_keys import dev_key
from consumers.gateway.server import running_gateway
from consumers.legacy.adapter import legacy_adapter
from consumers.ops.metrics import metrics_server
from consumers.ops.monitor import monitoring
from consumers.ops.redact import redact_url
from consumers.ops.signals import stop_event
from consumers.worker.service import ConsumerService
from schemas.topics import Topics

log = logging.getLogger("imagestream")
# Without internet the configured hub model cannot load; the embedded stack then runs
# on random weights of the same architecture rather than not at all (said in one line).
# Faces fall back to dlib's real model instead, which `make install` ships in the
# face-recognition-models wheel (`consume` stops instead).
DEV_FALLBACKS = {
    "clip": "random:vit-b-32",
    "dinov2": "random:small",
    "face": "Dlib",
    "caption": "random:blip-base",
}
# Off by default (a production consumer needs real weights only where faces are wanted),
# on in the embedded stack. Labels share the clip task's model, so they cost one more
# image-tower pass and show on the demo page; OCR reads text for text search (a fraction of
# a second per image); captions stay off (seconds per image on a CPU).
DEV_TASKS = ("face", "labels", "ocr")
# Tansu answers a group join after half the session timeout; 6 s keeps start-up quick.
DEV_KAFKA = {"SESSION_TIMEOUT_MS": "6000", "HEARTBEAT_INTERVAL_MS": "1000"}
# Tansu holds a fetch over several partitions for its whole wait even when a record
# arrives, so a gateway request would wait up to 500 ms for the consumer to see it: poll
# the RPC topic every 50 ms instead (about 0.03 cores of consumer and broker while idle;
# the load test, which sends no requests, keeps the production default).
DEV_RPC_FETCH_MAX_WAIT_MS = "50"


@asynccontextmanager
async def running_consumers(
    settings: Settings, tasks: Sequence[str] | None = None
) -> AsyncIterator[ConsumerService]:
    """/readyz answers 503 from here until the models are loaded and the broker started."""
    service = ConsumerService(settings, tasks)
    metrics = settings.metrics
    with metrics_server(metrics.host, metrics.port, lambda: service.ready):
        try:
            await service.start()
            async with monitoring([service.broker], metrics.poll_interval_s):
                yield service
        finally:
            await service.stop()


async def consume(settings: Settings, tasks: Sequence[str] | None) -> None:
    stop = stop_event()
    async with running_consumers(settings, tasks):
        await stop.wait()


def _dev_environment(stack_env: dict[str, str], milvus_uri: str) -> Settings:
    os.environ.update(stack_env)
    os.environ.setdefault("IMAGESTREAM_MILVUS__URI", milvus_uri)
    for name, value in DEV_KAFKA.items():
        os.environ.setdefault(f"IMAGESTREAM_KAFKA__{name}", value)
    os.environ.setdefault("IMAGESTREAM_KAFKA__RPC_FETCH_MAX_WAIT_MS", DEV_RPC_FETCH_MAX_WAIT_MS)
    for task, spec in DEV_FALLBACKS.items():
        os.environ.setdefault(f"IMAGESTREAM_{task.upper()}__FALLBACK_MODEL", spec)
    for task in DEV_TASKS:  # an explicit IMAGESTREAM_<TASK>__ENABLED still wins
        os.environ.setdefault(f"IMAGESTREAM_{task.upper()}__ENABLED", "true")
    return Settings()


@asynccontextmanager
async def embedded_stack(settings: Settings, runtime_dir: Path) -> AsyncIterator[Settings]:
    """Start the servers and yield settings that point at them."""
    runtime_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, at start-up)
    topics = Topics(settings.kafka.topic_prefix).all()
    stack = EmbeddedStack(
        topics=topics,
        partitions=settings.kafka.partitions,
        buckets=sorted({settings.s3.bucket, *settings.s3.allowed_buckets}),
        runtime_dir=runtime_dir,
    )
    async with stack:
        yield _dev_environment(stack.env(), str(runtime_dir / "milvus.db"))


def _write_stack_env(env: dict[str, str]) -> None:
    STACK_ENV.parent.mkdir(parents=True, exist_ok=True)
    STACK_ENV.write_text("".join(f"{k}={v}\n" for k, v in sorted(env.items())))


async def up(settings: Settings, tasks: Sequence[str] | None, runtime_dir: Path) -> None:
    stop = stop_event()
    async with embedded_stack(settings, runtime_dir) as live:
        env = {k: v for k, v in os.environ.items() if k.startswith("IMAGESTREAM_")}
        _write_stack_env(env)
        key, auth = dev_key(live.gateway.auth)  # in memory: gone when the stack stops
        live.gateway.auth = auth
        try:
            async with (
                running_consumers(live, tasks) as service,
                running_gateway(live, any_port_if_busy=True) as gateway,
                legacy_adapter(live) if live.legacy.polling_url else contextlib.nullcontext(),
            ):
                topics = service.topics
                print(f"kafka      {live.kafka.bootstrap_servers}")
                print(f"s3         {live.s3.endpoint_url}  (bucket {live.s3.bucket})")
                print(f"milvus     {live.milvus.uri}")
                print(f"topics     {topics.images} -> {topics.results}")
                print(f"gateway    {gateway.url}  (OpenAPI {gateway.url}/docs)")
                print(f"demo page  {gateway.url}/demo")
                print(f"dev key    {key}  (tenant dev; the demo page asks for it)")
                if live.legacy.polling_url:
                    print(f"legacy     polling {redact_url(live.legacy.polling_url)}")
                print(f"env        {STACK_ENV} (read by imagestream ingest)")
                print("ready: press Ctrl-C to stop", flush=True)
                await stop.wait()
        finally:
            with contextlib.suppress(FileNotFoundError):
                STACK_ENV.unlink()
    print("stopped", flush=True)
