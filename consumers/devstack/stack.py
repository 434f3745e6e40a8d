"""The embedded stack: a Tansu broker and an S3 server (``consumers/devstack/servers.py``) with
the topics and buckets created, and the settings that point at them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, Self

# aiokafka ships no type information ("unused-ignore": once mypy's overrides list it).
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped,unused-ignore]
from pydantic import SecretStr

from consumers.config.settings import RUNTIME_DIR, S3Settings
from consumers.devstack.servers import Broker, S3Server, Service, StackError
from consumers.pipeline.s3 import S3Store
from consumers.worker.kafka import started

ACCESS_KEY_ID = "imagestream"
SECRET_ACCESS_KEY = "imagestream-secret"
REGION = "us-east-1"
_TOPIC_ALREADY_EXISTS = 36


async def create_topics(
    bootstrap_servers: str,
    topics: Sequence[str],
    partitions: int,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
    **admin_options: Any,
) -> None:
    """Create the topics (existing ones are fine) and wait until metadata shows them all.

    A topic that already exists with fewer partitions than asked for is an error.
    """
    names = list(dict.fromkeys(topics))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **admin_options)
    async with started(admin):
        new = [NewTopic(name, partitions, replication_factor) for name in names]
        response = await admin.create_topics(new)
        errors = [
            f"{topic}: {code} {message}"
            for topic, code, message in response.topic_errors
            if code not in (0, _TOPIC_ALREADY_EXISTS)
        ]
        if errors:
            raise StackError("creating topics failed: " + "; ".join(errors))
        counts = await _wait_for_topics(admin, names, time.monotonic() + timeout_s)
    short = {name: n for name, n in counts.items() if n < partitions}
    if short:
        raise StackError(f"topics exist with fewer than {partitions} partitions: {short}")


async def _wait_for_topics(
    admin: AIOKafkaAdminClient, names: list[str], deadline: float
) -> dict[str, int]:
    """Partition counts, once every topic has a leader for every partition."""
    while True:
        # All topics, not the named ones: a named metadata request may auto-create them.
        described = {t["topic"]: t for t in await admin.describe_topics()}
        counts: dict[str, int] = {}
        for name in names:
            topic = described.get(name)
            parts = topic["partitions"] if topic and topic["error_code"] == 0 else []
            if parts and all(p["error_code"] == 0 and p["leader"] >= 0 for p in parts):
                counts[name] = len(parts)
        if len(counts) == len(names):
            return counts
        if time.monotonic() > deadline:
            missing = sorted(set(names) - set(counts))
            raise StackError(f"topics not ready in metadata: {missing}")
        await asyncio.sleep(0.1)


async def create_bucket(
    endpoint_url: str,
    bucket: str,
    region: str = REGION,
    access_key_id: str = ACCESS_KEY_ID,
    secret_access_key: str = SECRET_ACCESS_KEY,
) -> None:
    """Create a bucket; one we already own is fine."""
    settings = S3Settings(
        endpoint_url=endpoint_url,
        region=region,
        access_key_id=SecretStr(access_key_id),
        secret_access_key=SecretStr(secret_access_key),
    )
    async with S3Store(settings) as s3:
        await s3.ensure_bucket(bucket)


class EmbeddedStack(Service):
    """Broker + S3 server with topics and buckets created; ``env()`` points settings at them."""

    def __init__(
        self,
        topics: Sequence[str],
        buckets: Sequence[str] = ("images",),
        partitions: int = 4,
        runtime_dir: Path = RUNTIME_DIR,
        region: str = REGION,
    ) -> None:
        self.topics = list(topics)
        self.buckets = list(buckets)
        self.partitions = partitions
        self.region = region
        self.broker = Broker(runtime_dir)
        self.s3 = S3Server(runtime_dir)

    async def start(self) -> Self:
        try:
            await _gather_all(self.broker.start(), self.s3.start())
            await create_topics(self.broker.bootstrap_servers, self.topics, self.partitions)
            for bucket in self.buckets:
                await create_bucket(self.s3.endpoint_url, bucket, self.region)
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        """Stops both servers even when stopping one of them fails."""
        await _gather_all(self.broker.stop(), self.s3.stop())

    def env(self) -> dict[str, str]:
        return {
            "IMAGESTREAM_KAFKA__BOOTSTRAP_SERVERS": self.broker.bootstrap_servers,
            "IMAGESTREAM_S3__ENDPOINT_URL": self.s3.endpoint_url,
            "IMAGESTREAM_S3__ACCESS_KEY_ID": ACCESS_KEY_ID,
            "IMAGESTREAM_S3__SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "IMAGESTREAM_S3__REGION": self.region,
        }


async def _gather_all(*steps: Awaitable[object]) -> None:
    """Run every step to the end, then raise the first failure."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
