"""The embedded stack's servers, exercised over real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import struct
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import aioboto3
import aiohttp
import pytest
from aiobotocore.config import AioConfig
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped,unused-ignore]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped,unused-ignore]
from aiokafka.errors import KafkaError, UnknownError  # type: ignore[import-untyped,unused-ignore]

from consumers.config.settings import Settings
from consumers.devstack.servers import HOST, Broker, StackError, find_tansu
from consumers.devstack.stack import EmbeddedStack, create_bucket, create_topics
from consumers.pipeline.s3 import S3Store
from consumers.worker.kafka import started

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
_METADATA = 3  # the Kafka protocol's api key of a Metadata request


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _gone(pid: int) -> bool:
    """Dead or a zombie: a reparented child may wait for a reaper that never comes."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def _partition_counts(bootstrap: str, topics: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    async with started(admin):
        described = await admin.describe_topics()
    return {t["topic"]: len(t["partitions"]) for t in described if t["topic"] in topics}


def test_find_tansu_is_executable() -> None:
    path = find_tansu()
    assert path.name.startswith("tansu")
    assert os.access(path, os.X_OK)


async def test_broker_advertises_loopback(kafka_broker: Broker) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap_servers)
    async with started(admin):
        cluster = await admin.describe_cluster()
    hosts = {(b["host"], b["port"]) for b in cluster["brokers"]}
    assert hosts == {("127.0.0.1", kafka_broker.port)}


async def test_create_topics_makes_the_requested_partitions(kafka_broker: Broker) -> None:
    four, one = f"four-{uuid.uuid4().hex}", f"one-{uuid.uuid4().hex}"
    await create_topics(kafka_broker.bootstrap_servers, [four], partitions=4)
    await create_topics(kafka_broker.bootstrap_servers, [one], partitions=1)
    # Idempotent: existing topics with enough partitions are fine.
    await create_topics(kafka_broker.bootstrap_servers, [four, one, four], partitions=1)
    counts = await _partition_counts(kafka_broker.bootstrap_servers, [four, one])
    assert counts == {four: 4, one: 1}
    with pytest.raises(StackError, match="fewer than 4 partitions"):
        await create_topics(kafka_broker.bootstrap_servers, [one], partitions=4)


async def _drain(consumer: AIOKafkaConsumer, expected: int) -> list[tuple[bytes, bytes, int]]:
    got: list[tuple[bytes, bytes, int]] = []
    deadline = time.monotonic() + 20
    while len(got) < expected and time.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=500)
        got += [(m.key, m.value, m.partition) for ms in batch.values() for m in ms]
    return got


async def _consume_and_commit(bootstrap: str, topic: str, group: str, expected: int) -> list[bytes]:
    # Tansu holds a JoinGroup for about half the session timeout (5 s at aiokafka's default).
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
        auto_offset_reset="earliest", session_timeout_ms=2000, heartbeat_interval_ms=300,
    )  # fmt: skip
    async with started(consumer):
        got = await _drain(consumer, expected)
        await consumer.commit()
        extra = await consumer.getmany(timeout_ms=300)
    assert not extra, "nothing beyond what was produced"
    assert len({partition for _, _, partition in got}) > 1, "keys spread over partitions"
    return [value for _, value, _ in got]


async def test_consumer_group_resumes_after_committed_offsets(kafka_broker: Broker) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic, group = f"round-trip-{uuid.uuid4().hex}", f"group-{uuid.uuid4().hex}"
    await create_topics(bootstrap, [topic], partitions=4)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    async with started(producer):
        first = [f'{{"n": {i}}}'.encode() for i in range(12)]
        for i, value in enumerate(first):
            await producer.send_and_wait(topic, value, key=f"image-{i}".encode())
        assert sorted(await _consume_and_commit(bootstrap, topic, group, 12)) == sorted(first)
        second = [f'{{"n": {i}}}'.encode() for i in range(12, 20)]
        for i, value in enumerate(second, start=12):
            await producer.send_and_wait(topic, value, key=f"image-{i}".encode())
    # A restarted member of the same group starts after the commit, not from the beginning.
    assert sorted(await _consume_and_commit(bootstrap, topic, group, 8)) == sorted(second)


async def test_idempotent_producer_is_refused(kafka_broker: Broker) -> None:
    """PITFALLS: Tansu rejects InitProducerId; enable_idempotence must stay off here."""
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_broker.bootstrap_servers, enable_idempotence=True
    )
    try:
        with pytest.raises(UnknownError):
            await producer.start()
    finally:
        await producer.stop()


async def test_embedded_stack_serves_topics_and_s3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topics = ["images.v1", "results.v1"]
    async with EmbeddedStack(topics, buckets=["images", "other"], runtime_dir=tmp_path) as stack:
        env = stack.env()
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings()  # the variable names must be the settings' own
        assert settings.kafka.bootstrap_servers == stack.broker.bootstrap_servers
        assert settings.s3.endpoint_url == stack.s3.endpoint_url
        counts = await _partition_counts(stack.broker.bootstrap_servers, topics)
        assert counts == dict.fromkeys(topics, 4)
        await create_bucket(stack.s3.endpoint_url, "images")  # an owned bucket is fine
        assert await _s3_round_trip(env, "images") == b"\x89PNG fake"
        # Keep-alive, as S3 and MinIO: three reads, one connection
        # (consumers/devstack/s3_server.py).
        assert await _connections_for_reads(settings, "images", "a/b.png", 3) == (1, 2)
        ports = [stack.broker.port, stack.s3.port]
        pids = [stack.broker.pid, stack.s3.pid]
    assert not any(_accepts(port) for port in ports)
    assert all(pid is not None and _gone(pid) for pid in pids)
    assert (tmp_path / "tansu.log").read_text().startswith("tansu broker")


async def _connections_for_reads(
    settings: Settings, bucket: str, key: str, reads: int
) -> tuple[int, int]:
    """(connections opened, connections reused) by ``reads`` S3Store reads in a row."""
    opened, reused = [], []
    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(lambda *_: _append(opened))
    trace.on_connection_reuseconn.append(lambda *_: _append(reused))
    async with S3Store(settings.s3, http_trace=[trace]) as s3:
        for _ in range(reads):
            assert await s3.get(bucket, key) == b"\x89PNG fake"
    return len(opened), len(reused)


async def _append(into: list[None]) -> None:
    into.append(None)


async def _s3_round_trip(env: dict[str, str], bucket: str) -> bytes:
    session = aioboto3.Session(
        aws_access_key_id=env["IMAGESTREAM_S3__ACCESS_KEY_ID"],
        aws_secret_access_key=env["IMAGESTREAM_S3__SECRET_ACCESS_KEY"],
    )
    config = AioConfig(
        request_checksum_calculation="when_required", response_checksum_validation="when_required"
    )
    async with session.client(
        "s3", endpoint_url=env["IMAGESTREAM_S3__ENDPOINT_URL"],
        region_name=env["IMAGESTREAM_S3__REGION"], config=config,
    ) as s3:  # fmt: skip
        await s3.put_object(Bucket=bucket, Key="a/b.png", Body=b"\x89PNG fake")
        response = await s3.get_object(Bucket=bucket, Key="a/b.png")
        async with response["Body"] as body:
            return await body.read()


async def test_stop_kills_the_server(tmp_path: Path) -> None:
    broker = await Broker(tmp_path).start()
    pid, port = broker.pid, broker.port
    assert pid is not None
    assert _accepts(port)
    await broker.stop()
    await broker.stop()  # idempotent
    assert _gone(pid)
    assert not _accepts(port)


async def test_a_server_that_cannot_start_names_its_log(tmp_path: Path) -> None:
    # Bound but not listening: Tansu cannot bind it, and probes are refused at once.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        broker = Broker(tmp_path, port=taken.getsockname()[1], timeout_s=10)
        with pytest.raises(StackError, match="Address in use") as failure:
            await broker.start()
    assert str(tmp_path / "tansu.log") in str(failure.value)


async def _forward(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, drop_metadata: bool
) -> None:
    """Kafka frames (4-byte length, then api key first), less Metadata requests if asked."""
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            head = await reader.readexactly(4)
            body = await reader.readexactly(struct.unpack(">i", head)[0])
            if not (drop_metadata and struct.unpack(">h", body[:2])[0] == _METADATA):
                writer.write(head + body)
                await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def _metadata_never_answered(broker: Broker) -> AsyncIterator[int]:
    """A port where ``broker`` answers every request but Metadata: a broker that accepts
    and speaks Kafka but is too slow to serve cluster metadata."""

    handlers: list[asyncio.Task[None]] = []

    async def forward_both(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(HOST, broker.port)
        await asyncio.gather(
            _forward(reader, upstream_writer, drop_metadata=True),
            _forward(upstream_reader, writer, drop_metadata=False),
        )

    def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.create_task(forward_both(reader, writer)))

    server = await asyncio.start_server(accepted, HOST, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await asyncio.gather(*handlers)  # each ends when the client has closed its side


async def test_a_probe_that_gets_no_metadata_leaves_no_connection_open(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    # The probe ends through aiokafka's request timeout: cancelled by its own deadline
    # between connecting and the answer, it left an AIOKafkaConnection open, whose
    # "Unclosed" warning fails whichever test runs when the collector finds it.
    async with _metadata_never_answered(kafka_broker) as port:
        probe = Broker(tmp_path, port=port)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with pytest.raises((KafkaError, TimeoutError)):  # not ready, either way
                await probe.probe()
            gc.collect()
    assert [str(w.message) for w in seen if w.category is ResourceWarning] == []


_ORPHAN_SCRIPT = """
import asyncio, sys, time
from pathlib import Path
from consumers.devstack.servers import Broker

async def main():
    broker = await Broker(Path(sys.argv[1])).start()
    print(broker.pid, broker.port, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_broker_dies_with_its_killed_parent(tmp_path: Path) -> None:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    parent = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": path}, text=True,
    )  # fmt: skip
    with parent:
        assert parent.stdout is not None
        try:
            pid, port = map(int, parent.stdout.readline().split())
            assert not _gone(pid)
            assert _accepts(port)
        finally:
            parent.kill()
            parent.wait()
    deadline = time.monotonic() + 5
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(pid), "tansu outlived its SIGKILLed parent"
    assert not _accepts(port)
