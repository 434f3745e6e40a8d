"""A few hundred generated hostile records among good events on one partition, through a
running clip consumer (real Tansu, moto and milvus-lite): every good event gets its
result and the group commits to the end of the partition, so nothing stalled it."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

import pytest
from hypothesis import Phase, given
from hypothesis import settings as hypothesis_settings

from consumers.client.ingest import result_reader
from consumers.config.settings import ClipSettings, DeliverySettings, S3Settings
from consumers.devstack.launcher import running_consumers
from consumers.devstack.servers import Broker
from consumers.pipeline.records import Record
from schemas.events import Status
from tests.helpers import collect, produce_records, upload
from tests.hostile_strategies import records
from tests.kafka_checks import wait_until_committed
from tests.stack_settings import small_jpegs, stack_settings

pytestmark = pytest.mark.integration
HOSTILE, GOOD = 200, 30


def _hostile() -> list[Record]:
    """HOSTILE records as hypothesis generates them, drawn up front: a live stack per
    example would take minutes, so the test runs them all through one consumer."""
    drawn: list[Record] = []

    @hypothesis_settings(
        max_examples=HOSTILE, phases=[Phase.generate], database=None, deadline=None
    )
    @given(records())
    def draw(record: Record) -> None:
        drawn.append(record)

    draw()
    return drawn


async def test_hostile_records_among_good_events_never_stall_the_partition(
    kafka_broker: Broker, s3_server: S3Settings, model_cache: Path, tmp_path: Path
) -> None:
    settings = await stack_settings(
        kafka_broker.bootstrap_servers,
        s3_server,
        tmp_path,
        model_cache,
        partitions=1,
        tag="live",
        clip=ClipSettings(model="random:tiny", device="cpu", max_records=32),
        delivery=DeliverySettings(retry_delays_s=[0.2], replay_pause_s=0.5),
    )
    run = uuid.uuid4().hex[:8]
    await upload(settings, {f"{run}/{i}.jpg": data for i, data in enumerate(small_jpegs(GOOD, 5))})
    good = [
        json.dumps({"event_id": f"{run}-{i}", "image_id": f"good-{run}-{i}",
                    "uri": f"s3://images/{run}/{i}.jpg", "top_k": 2}).encode()
        for i in range(GOOD)
    ]  # fmt: skip
    mixed: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = [
        (r.key, r.value, list(r.headers)) for r in _hostile()
    ]
    mixed += [(f"good-{run}-{i}".encode(), value, []) for i, value in enumerate(good)]
    random.Random(run).shuffle(mixed)
    async with running_consumers(settings, ["clip"]) as service, result_reader(settings) as reader:
        images = service.topics.images
        await produce_records(settings, [(images, k, v, h) for k, v, h in mixed])
        await wait_until_committed(
            settings, images, service.topics.group("imagestream-clip"), timeout_s=120
        )
        # Published before the commit: all there already, read until a short idle.
        results = await collect(reader, HOSTILE + GOOD, timeout_s=4)
    ok = {r.image_id for r in results if r.status is Status.OK}
    missing = {f"good-{run}-{i}" for i in range(GOOD)} - ok
    assert not missing, f"good events without a result: {sorted(missing)}"
    # At most one answer per record: the hostile ones are answered too, not skipped.
    assert GOOD < len(results) <= HOSTILE + GOOD
