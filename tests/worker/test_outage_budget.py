"""Outages wait inside max_poll_interval: the settings check counts every attempt's
deadlines, and against an S3 that accepts connections and never answers a running
consumer keeps its partitions (no rebalance), commits nothing, publishes nothing, and
delivers everything once S3 answers again."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from consumers.client.ingest import result_reader
from consumers.config.settings import (
    DeliverySettings,
    KafkaSettings,
    MilvusSettings,
    S3Settings,
    Settings,
)
from consumers.devstack.launcher import running_consumers
from consumers.devstack.servers import Broker
from schemas.events import Status
from tests.helpers import collect, event, produce_events, upload
from tests.kafka_checks import offsets, wait_until_committed
from tests.s3_gate import s3_gate
from tests.stack_settings import small_jpegs, stack_settings


def test_defaults_fit_the_poll_interval() -> None:
    settings = Settings(_env_file=None)
    # 6 attempts x (20 s S3 read + 10 s Milvus call) + 15.5 s of delays + 5 s pause.
    assert settings.worst_batch_s() == pytest.approx(200.5)
    assert settings.worst_batch_s() <= settings.kafka.max_poll_interval_ms / 1000


def test_the_check_counts_each_attempts_deadlines_not_only_the_delays() -> None:
    # The delays alone (3 s) fit easily in 60 s; 4 attempts of a 20 s read do not.
    with pytest.raises(ValidationError, match=r"4 attempts x \(s3.request_timeout_s 20"):
        Settings(
            _env_file=None,
            kafka=KafkaSettings(max_poll_interval_ms=60_000),
            s3=S3Settings(request_timeout_s=20),
            milvus=MilvusSettings(timeout_s=1),
            delivery=DeliverySettings(retry_delays_s=[0.5, 0.5, 1], replay_pause_s=1),
        )


@pytest.mark.integration
async def test_a_silent_s3_holds_the_batch_without_losing_the_group(
    kafka_broker: Broker, s3_server: S3Settings, model_cache: Path, tmp_path: Path
) -> None:
    async with s3_gate(str(s3_server.endpoint_url)) as gate:
        settings = await stack_settings(
            kafka_broker.bootstrap_servers,
            s3_server.model_copy(update={"endpoint_url": gate.url, "request_timeout_s": 0.5}),
            tmp_path,
            model_cache,
            partitions=1,
            tag="silent",
            # worst batch: 3 x (0.5 + 0.5) + 0.8 = 3.8 s, inside the 6 s interval
            kafka={"max_poll_interval_ms": 6000},
            milvus=MilvusSettings(uri=str(tmp_path / "milvus.db"), timeout_s=0.5),
            delivery=DeliverySettings(retry_delays_s=[0.2, 0.2], replay_pause_s=0.4),
        )
        run = uuid.uuid4().hex[:8]
        keys = [f"{run}/{i}.jpg" for i in range(4)]
        await upload(settings, dict(zip(keys, small_jpegs(4, 3), strict=True)))
        events = [event(f"img-{run}-{i}", f"s3://images/{key}") for i, key in enumerate(keys)]
        async with (
            running_consumers(settings, ["clip"]) as service,
            result_reader(settings) as reader,
        ):
            await produce_events(settings, events[:1])  # joined and consuming
            assert [r.status for r in await collect(reader, 1, timeout_s=30)] == [Status.OK]
            inflight = service.workers["clip"].delivery.inflight
            rebalances = inflight.rebalances
            gate.hang()
            await produce_events(settings, events[1:])
            assert await collect(reader, 1, timeout_s=9) == []  # 1.5 x max_poll_interval
            group = service.topics.group("imagestream-clip")
            _, committed = await offsets(settings, service.topics.images, group)
            assert committed == {0: 1}, "nothing past the batch waiting on S3"
            assert inflight.rebalances == rebalances, "the consumer left its group"
            gate.resume()
            results = await collect(reader, 3, timeout_s=30)
            await wait_until_committed(settings, service.topics.images, group, 30)
    assert sorted(r.image_id for r in results) == sorted(e.image_id for e in events[1:])
    assert {r.status for r in results} == {Status.OK}
