"""`imagestream topics create`, the compose stack's topic-init job, against a real broker."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from consumers.cli.main import main
from consumers.config.settings import KafkaSettings, LegacySettings, Settings
from consumers.devstack.servers import Broker
from consumers.legacy.callbacks import CallbackSender
from consumers.worker.kafka import started
from schemas.topics import Topics

pytestmark = pytest.mark.integration


async def _partitions(bootstrap: str, names: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    async with started(admin):
        described = await admin.describe_topics(names)
    return {t["topic"]: len(t["partitions"]) for t in described}


async def test_creates_every_topic_and_refuses_to_shrink_the_ask(
    kafka_broker: Broker, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    topics = Topics(f"cli{uuid.uuid4().hex[:6]}")
    monkeypatch.setenv("IMAGESTREAM_KAFKA__BOOTSTRAP_SERVERS", kafka_broker.bootstrap_servers)
    monkeypatch.setenv("IMAGESTREAM_KAFKA__TOPIC_PREFIX", topics.prefix)
    monkeypatch.setenv("IMAGESTREAM_KAFKA__PARTITIONS", "3")

    assert await asyncio.to_thread(main, ["topics", "create"]) == 0
    assert await _partitions(kafka_broker.bootstrap_servers, topics.all()) == dict.fromkeys(
        topics.all(), 3
    )
    assert f"{topics.images} (3 partitions)" in capsys.readouterr().out
    # Running the job again is fine; asking for more partitions than exist is an error.
    assert await asyncio.to_thread(main, ["topics", "create"]) == 0
    assert await asyncio.to_thread(main, ["topics", "create", "--partitions", "5"]) == 1
    assert "fewer than 5 partitions" in capsys.readouterr().err


def test_default_groups_carry_the_topic_prefix() -> None:
    # Two deployments sharing a cluster under different prefixes must not share a group
    # (a member of one would take the other's partitions in every rebalance).
    assert Topics("acme").group("imagestream-clip") == "acme.imagestream-clip"
    assert Topics().group("imagestream-clip") == "imagestream-clip"
    # The legacy adapter's callbacks group too, unless one is set explicitly.
    for explicit, group in ((None, "acme.imagestream-legacy-callbacks"), ("mine", "mine")):
        settings = Settings(
            _env_file=None,
            kafka=KafkaSettings(topic_prefix="acme"),
            legacy=LegacySettings(group_id=explicit),
        )
        assert CallbackSender(settings, cast(Any, None), cast(Any, None)).group_id == group
