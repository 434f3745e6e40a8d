"""Domain metrics, the /metrics /healthz /readyz endpoint, and the lag and GPU monitor."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request
import uuid
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy
from prometheus_client import REGISTRY

from consumers.config.settings import KafkaSettings, Settings
from consumers.devstack.servers import Broker
from consumers.devstack.stack import create_topics
from consumers.ops.metrics import metrics_server, observe_results, record_dlq
from consumers.ops.monitor import Monitor, gpu_memory
from consumers.worker.kafka import make_broker
from schemas.events import ErrorCode, Status, TaskError, TaskResult, Timings, utcnow
from schemas.topics import Topics
from tests.helpers import produce

HOST = "127.0.0.1"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _result(task: str, status: Status, **fields: Any) -> TaskResult:
    return TaskResult(
        result_id=uuid.uuid4().hex,
        source_event_id=uuid.uuid4().hex,
        image_id="img",
        task=task,
        status=status,
        timings=Timings(fetch=3, decode=4, encode=20, index=2, search=1, total=31),
        **fields,
    )


def test_results_stages_and_end_to_end_latency_are_observed() -> None:
    task = f"unit-{uuid.uuid4().hex[:6]}"
    ok = _result(task, Status.OK, submitted_at=utcnow() - timedelta(seconds=2))
    bad = _result(task, Status.ERROR, error=TaskError(code=ErrorCode.NOT_AN_IMAGE, message="html"))
    observe_results(task, [ok, bad], batch_size=5, publish_ms=7.5)

    assert sample("imagestream_results_total", task=task, status="ok", code="") == 1
    assert sample("imagestream_results_total", task=task, status="error", code="not_an_image") == 1
    assert sample("imagestream_batch_size_sum", task=task) == 5
    stage = "imagestream_stage_duration_ms_sum"
    assert sample(stage, task=task, stage="encode") == 40
    assert sample(stage, task=task, stage="publish") == 15
    # Only the result that carries submitted_at has an end-to-end latency.
    assert sample("imagestream_e2e_latency_ms_count", task=task) == 1
    assert 2000 <= sample("imagestream_e2e_latency_ms_sum", task=task) < 60_000


def test_dlq_records_are_counted_by_closed_error_codes() -> None:
    task = f"unit-{uuid.uuid4().hex[:6]}"
    record_dlq(task, ErrorCode.INVALID_EVENT)
    record_dlq(task, "invalid_event")
    record_dlq(task, "a code nobody defined")
    assert sample("imagestream_dlq_records_total", task=task, code="invalid_event") == 2
    assert sample("imagestream_dlq_records_total", task=task, code="other") == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def test_endpoint_serves_metrics_health_and_readiness() -> None:
    ready = False
    port = _free_port()
    with metrics_server(HOST, port, lambda: ready) as server:
        assert server is not None
        assert server.server_address[1] == port
        status, body = get(port, "/metrics")
        assert status == 200
        assert "# TYPE imagestream_results_total counter" in body
        assert get(port, "/healthz") == (200, "ok\n")
        assert get(port, "/readyz") == (503, "starting\n")
        ready = True
        assert get(port, "/readyz") == (200, "ready\n")
        assert get(port, "/nothing")[0] == 404
        # A second process on the same machine gets another port rather than failing.
        with metrics_server(HOST, port, lambda: True) as second:
            assert second is not None
            assert second.server_address[1] != port
    with pytest.raises(urllib.error.URLError):
        get(port, "/healthz")
    with metrics_server(HOST, 0, lambda: True) as none:
        assert none is None


class _FakeCuda:
    """torch.cuda's counters for two devices, as on a GPU machine."""

    def __init__(self, initialized: bool = True) -> None:
        self.initialized = initialized

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return self.initialized

    def device_count(self) -> int:
        return 2

    def memory_allocated(self, index: int) -> int:
        return 1000 * (index + 1)

    def memory_reserved(self, index: int) -> int:
        return 4000 * (index + 1)

    def get_device_properties(self, index: int) -> SimpleNamespace:
        return SimpleNamespace(total_memory=80 * 2**30)


async def test_gpu_memory_is_reported_only_by_processes_that_use_cuda() -> None:
    assert gpu_memory(torch.cuda) == (
        {} if not torch.cuda.is_initialized() else gpu_memory(torch.cuda)
    )
    assert gpu_memory(_FakeCuda(initialized=False)) == {}
    await Monitor([], cuda=_FakeCuda()).poll()
    gpu = "imagestream_gpu_memory_bytes"
    assert sample(gpu, device="cuda:1", kind="allocated") == 2000
    assert sample(gpu, device="cuda:1", kind="reserved") == 8000
    assert sample(gpu, device="cuda:0", kind="total") == 80 * 2**30


async def _wait_for(condition: Any, timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


def _two_groups(kafka: KafkaSettings, topic: str) -> tuple[KafkaBroker, dict[str, int]]:
    """One broker, two groups on ``topic``: "acked" commits what it reads, "held" never."""
    broker = make_broker(kafka, apply_types=False)
    seen = {"acked": 0, "held": 0}

    def counter(name: str) -> Any:
        async def handle(body: list[Any]) -> None:
            seen[name] += len(body)

        return handle

    for name, policy in (("acked", AckPolicy.ACK), ("held", AckPolicy.MANUAL)):
        broker.subscriber(
            topic,
            group_id=f"{kafka.topic_prefix}-{name}",
            batch=True,
            ack_policy=policy,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )(counter(name))
    return broker, seen


def _summed(name: str, partitions: int, **labels: str) -> float:
    return sum(sample(name, partition=str(p), **labels) for p in range(partitions))


@pytest.mark.integration
async def test_lag_per_partition_is_end_minus_committed(kafka_broker: Broker) -> None:
    topics = Topics(f"lag{uuid.uuid4().hex[:6]}")
    await create_topics(kafka_broker.bootstrap_servers, topics.all(), partitions=3)
    kafka = KafkaSettings(
        bootstrap_servers=kafka_broker.bootstrap_servers,
        topic_prefix=topics.prefix,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    settings = Settings(_env_file=None, kafka=kafka)
    await produce(settings, [(f"k{i}".encode(), b"{}") for i in range(12)])
    broker, seen = _two_groups(kafka, topics.images)
    received = {"app_name": "imagestream", "broker": "kafka", "handler": topics.images}
    before = sample("faststream_received_messages_total", **received)
    monitor = Monitor([broker])
    async with broker:
        await broker.start()
        await _wait_for(lambda: seen == {"acked": 12, "held": 12}, 60)
        deadline = asyncio.get_running_loop().time() + 30
        lags: dict[str, float] = {}
        while lags != {"acked": 0, "held": 12}:  # the acked group's commit lands soon after
            assert asyncio.get_running_loop().time() < deadline, lags
            await monitor.poll()
            lags = {
                name: _summed(
                    "imagestream_consumer_lag",
                    3,
                    group=f"{topics.prefix}-{name}",
                    topic=topics.images,
                )
                for name in seen
            }
        assert _summed("imagestream_topic_end_offset", 3, topic=topics.images) == 12
        for p in range(3):  # the keys spread the events over every partition
            assert sample("imagestream_topic_end_offset", topic=topics.images, partition=str(p))
    assert sample("faststream_received_messages_total", **received) - before == 24
    monitor.clear()
    gone = {"group": f"{topics.prefix}-held", "topic": topics.images, "partition": "0"}
    assert REGISTRY.get_sample_value("imagestream_consumer_lag", gone) is None
