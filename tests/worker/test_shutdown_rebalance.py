"""Shutdown and rebalance with a batch stuck on an S3 outage (a TCP proxy the test cuts).

Neither may commit past the stuck batch; once S3 is back every event gets its result.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from consumers.config.settings import DeliverySettings, MilvusSettings, S3Settings, Settings
from consumers.devstack.launcher import running_consumers
from consumers.devstack.servers import Broker
from schemas.events import ImageSubmitted, Status, TaskResult
from schemas.topics import Topics
from tests.helpers import event, jpeg, produce_events, upload
from tests.kafka_checks import offsets, read_all, wait_until_committed
from tests.stack_settings import stack_settings
from tests.tcp_proxy import ProxyProcess

pytestmark = pytest.mark.integration
GROUP = "imagestream-clip"  # after the test's topic prefix
GRACEFUL_S = 5.0


@pytest.fixture
async def s3_proxy(s3_server: S3Settings) -> AsyncIterator[ProxyProcess]:
    host, port = (s3_server.endpoint_url or "").removeprefix("http://").split(":")
    async with ProxyProcess(host, int(port)) as proxy:
        yield proxy


@pytest.fixture
async def settings(
    kafka_broker: Broker,
    s3_server: S3Settings,
    s3_proxy: ProxyProcess,
    model_cache: Path,
    tmp_path: Path,
) -> Settings:
    return await stack_settings(
        kafka_broker.bootstrap_servers,
        # 21 attempts x (2 s read + 10 s Milvus call) + 21 s of pauses fit in 300 s.
        s3_server.model_copy(
            update={"endpoint_url": s3_proxy.url, "connect_timeout_s": 1.0}
            | {"request_timeout_s": 2.0}
        ),
        tmp_path / "a",
        model_cache,
        partitions=4,
        tag="s",
        delivery=DeliverySettings(
            retry_delays_s=[1.0] * 20,
            replay_pause_s=1.0,
            graceful_timeout_s=GRACEFUL_S,
            prefetch="decode",  # the GPU default: a batch prefetched behind the stuck one
        ),
    )


async def _events(settings: Settings, count: int) -> list[ImageSubmitted]:
    run = uuid.uuid4().hex[:6]
    pixels = [jpeg(np.full((32, 32, 3), 20 * i, dtype=np.uint8)) for i in range(count)]
    await upload(settings, {f"{run}/{i}.jpg": data for i, data in enumerate(pixels)})
    return [event(f"{run}-{i}", f"s3://{settings.s3.bucket}/{run}/{i}.jpg") for i in range(count)]


async def _wait_for_log(caplog: pytest.LogCaptureFixture, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in caplog.text:
        assert time.monotonic() < deadline, f"no log line with {text!r}"
        await asyncio.sleep(0.1)


async def _results(settings: Settings, events: list[ImageSubmitted]) -> list[TaskResult]:
    ours = {e.event_id for e in events}
    records = await read_all(settings, [Topics(settings.kafka.topic_prefix).results])
    results = [TaskResult.model_validate_json(r.value) for r in records]
    return [r for r in results if r.source_event_id in ours]


async def _committed(settings: Settings) -> dict[int, int]:
    topics = Topics(settings.kafka.topic_prefix)
    return (await offsets(settings, topics.images, topics.group(GROUP)))[1]


async def _every_event_gets_one_result_id(settings: Settings, events: list[ImageSubmitted]) -> None:
    topics = Topics(settings.kafka.topic_prefix)
    await wait_until_committed(settings, topics.images, topics.group(GROUP), 90)
    ids: dict[str, set[str]] = defaultdict(set)
    for result in await _results(settings, events):
        assert result.status is Status.OK, result.error
        ids[result.source_event_id].add(result.result_id)
    assert {e.event_id: len(ids[e.event_id]) for e in events} == {e.event_id: 1 for e in events}


def _elsewhere(settings: Settings, folder: Path) -> Settings:
    """The same group and topics, another milvus-lite folder (one per open store)."""
    return settings.model_copy(update={"milvus": MilvusSettings(uri=str(folder / "milvus.db"))})


async def test_shutdown_abandons_a_stuck_batch_without_committing_it(
    settings: Settings, s3_proxy: ProxyProcess, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    events = await _events(settings, 6)
    caplog.set_level(logging.INFO)
    await s3_proxy.block()
    async with running_consumers(settings, ["clip"]):
        await produce_events(settings, events)
        await _wait_for_log(caplog, "transient failure", timeout_s=60)
        stopping = time.monotonic()
    stopped_in = time.monotonic() - stopping
    assert stopped_in < GRACEFUL_S
    assert set((await _committed(settings)).values()) == {0}
    assert await _results(settings, events) == []
    await s3_proxy.unblock()
    async with running_consumers(_elsewhere(settings, tmp_path / "again"), ["clip"]):
        await _every_event_gets_one_result_id(settings, events)


async def test_a_revoke_during_a_stuck_batch_commits_nothing_past_it(
    settings: Settings, s3_proxy: ProxyProcess, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    events = await _events(settings, 12)
    caplog.set_level(logging.INFO)
    await s3_proxy.block()
    async with running_consumers(settings, ["clip"]):
        await produce_events(settings, events)
        await _wait_for_log(caplog, "transient failure", timeout_s=60)
        async with running_consumers(_elsewhere(settings, tmp_path / "b"), ["clip"]):
            await _wait_for_log(caplog, "batch was in flight", timeout_s=60)
            assert set((await _committed(settings)).values()) == {0}
            await s3_proxy.unblock()
            await _every_event_gets_one_result_id(settings, events)
