"""Chaos: `imagestream consume` as a separate process, killed and cut off from S3.

2,000 events (1,600 distinct image ids) are produced at a steady rate while the consumer
is SIGKILLed three times at random moments and restarted, and S3 is unreachable for
20 s (a TCP proxy between the consumer and moto is closed). Afterwards every event has
a result, each event exactly one distinct result id, nothing became an error result,
the group committed everything, and Milvus holds one vector per distinct image id.
The consumer's log never shows a secret. The seed, the timeline and the counts are
printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from consumers.config.settings import KafkaSettings, MilvusSettings, S3Settings, Settings
from consumers.devstack.servers import Broker, die_with_parent, free_port
from consumers.devstack.stack import create_topics
from consumers.pipeline.s3 import S3Store
from consumers.vectorstore.store import VectorStore
from consumers.worker.kafka import CLI_CLIENT_ID, client_kwargs, make_producer, started
from loadtest.consumer import results_published
from schemas.events import ImageSubmitted, Status, TaskResult, dump
from schemas.topics import Topics
from tests.helpers import jpeg
from tests.kafka_checks import wait_until_committed
from tests.tcp_proxy import ProxyProcess

pytestmark = pytest.mark.integration
EVENTS, IMAGES, OBJECTS = 2000, 1600, 200
PRODUCE_S, OUTAGE_S, GRACEFUL_S = 60.0, 20.0, 5.0
# Produced only once S3 is cut off: a fast consumer may have caught up with the steady
# stream by then, and the outage must meet work in flight.
HELD_BACK = 100
S3_SECRET = f"chaos-s3-{uuid.uuid4().hex}"
SASL_SECRET = f"chaos-sasl-{uuid.uuid4().hex}"


@dataclass
class Tally:
    """What the results topic said so far."""

    ids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    messages: int = 0
    errors: list[TaskResult] = field(default_factory=list)

    def add(self, result: TaskResult) -> None:
        self.messages += 1
        self.ids[result.source_event_id].add(result.result_id)
        if result.status is not Status.OK:
            self.errors.append(result)


class Consumer:
    """`imagestream consume --tasks clip` in a child process; its output goes to a log."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        self.env, self.folder = env, folder
        self.log: IO[bytes] = (folder / "consumer.log").open("ab")
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.metrics_port = 0

    def start(self) -> None:
        command = [str(Path(sys.executable).parent / "imagestream"), "consume", "--tasks", "clip"]
        self.starts += 1
        self.metrics_port = free_port()  # this process's own counters, not its predecessor's
        env = self.env | {"IMAGESTREAM_METRICS__PORT": str(self.metrics_port)}
        self.process = subprocess.Popen(
            command, env=env, cwd=self.folder, stdin=subprocess.DEVNULL, stdout=self.log,
            stderr=subprocess.STDOUT, preexec_fn=die_with_parent(),  # noqa: PLW1509
        )  # fmt: skip

    async def logged(self, text: str, timeout_s: float) -> bool:
        """Whether the log shows ``text`` (written after this call began) in time."""
        path, deadline = self.folder / "consumer.log", time.monotonic() + timeout_s
        seen = path.stat().st_size
        while text.encode() not in path.read_bytes()[seen:]:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)
        return True

    async def published(self) -> int:
        """Results published by the process started last (0 until it serves metrics)."""
        try:
            return await asyncio.to_thread(results_published, self.metrics_port)
        except OSError:  # not listening yet (URLError is an OSError)
            return 0

    def tail(self, lines: int = 40) -> str:
        text = (self.folder / "consumer.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        assert self.process is not None
        assert self.process.poll() is None, "the consumer died on its own"
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    async def terminate(self) -> tuple[int, float]:
        """SIGTERM; the exit status and how long the exit took."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(self.process.wait, GRACEFUL_S + 15)
        return code, time.monotonic() - started

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


def _group(settings: Settings) -> str:
    return Topics(settings.kafka.topic_prefix).group("imagestream-clip")


def _consumer_env(
    settings: Settings, proxy: ProxyProcess, folder: Path, models: Path
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESTREAM_")}
    env.update(
        HF_HUB_OFFLINE="1",
        IMAGESTREAM_KAFKA__BOOTSTRAP_SERVERS=settings.kafka.bootstrap_servers,
        IMAGESTREAM_KAFKA__TOPIC_PREFIX=settings.kafka.topic_prefix,
        IMAGESTREAM_KAFKA__SESSION_TIMEOUT_MS="6000",
        IMAGESTREAM_KAFKA__HEARTBEAT_INTERVAL_MS="1000",
        IMAGESTREAM_KAFKA__SASL_PASSWORD=SASL_SECRET,  # configured, unused on PLAINTEXT
        IMAGESTREAM_S3__ENDPOINT_URL=proxy.url,
        IMAGESTREAM_S3__ACCESS_KEY_ID="chaos",
        IMAGESTREAM_S3__SECRET_ACCESS_KEY=S3_SECRET,
        IMAGESTREAM_S3__ALLOWED_BUCKETS=f'["{settings.s3.bucket}"]',
        IMAGESTREAM_S3__CONNECT_TIMEOUT_S="1",
        IMAGESTREAM_S3__READ_TIMEOUT_S="5",
        IMAGESTREAM_DELIVERY__PREFETCH="decode",  # the GPU default: the deepest overlap
        IMAGESTREAM_MILVUS__URI=str(folder / "milvus.db"),
        IMAGESTREAM_CLIP__MODEL="random:tiny",
        IMAGESTREAM_CLIP__DEVICE="cpu",
        IMAGESTREAM_CLIP__MAX_RECORDS="64",
        IMAGESTREAM_DELIVERY__RETRY_DELAYS_S="[0.5, 1, 2, 4]",
        IMAGESTREAM_DELIVERY__REPLAY_PAUSE_S="2",
        IMAGESTREAM_DELIVERY__GRACEFUL_TIMEOUT_S=str(GRACEFUL_S),
        IMAGESTREAM_MODEL_CACHE_DIR=str(models),
        IMAGESTREAM_SEARCH__ENABLED="false",  # one consumer group less to join per restart
    )
    return env


def _events(bucket: str, run: str) -> list[ImageSubmitted]:
    """EVENTS events; the last EVENTS - IMAGES re-submit earlier image ids."""
    return [
        ImageSubmitted(
            event_id=f"{run}-e{i}",
            image_id=f"{run}-img{i % IMAGES}",
            uri=f"s3://{bucket}/{run}/{i % OBJECTS}.jpg",
            tasks=["clip"],
            top_k=3,
        )
        for i in range(EVENTS)
    ]


async def _upload(settings: Settings, run: str) -> None:
    rng = np.random.default_rng(0)
    async with S3Store(settings.s3) as s3:

        async def one(i: int) -> None:
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            await s3.put(settings.s3.bucket, f"{run}/{i}.jpg", jpeg(pixels))

        await asyncio.gather(*(one(i) for i in range(OBJECTS)))


async def _produce(
    settings: Settings, events: list[ImageSubmitted], over_s: float = PRODUCE_S
) -> None:
    """At a steady rate over ``over_s``, so that the chaos lands mid-stream."""
    topic = Topics(settings.kafka.topic_prefix).images
    async with started(make_producer(settings.kafka, CLI_CLIENT_ID)) as producer:
        chunk = 20
        for start in range(0, len(events), chunk):
            sends = [
                await producer.send(topic, dump(e), key=e.image_id.encode())
                for e in events[start : start + chunk]
            ]
            await asyncio.gather(*sends)
            await asyncio.sleep(over_s * chunk / len(events))


async def _read_results(settings: Settings, tally: Tally) -> None:
    """Every result from the beginning of the topic, until cancelled."""
    consumer = AIOKafkaConsumer(**client_kwargs(settings.kafka), enable_auto_commit=False)
    async with started(consumer):
        topic = Topics(settings.kafka.topic_prefix).results
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while True:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    tally.add(TaskResult.model_validate_json(record.value))


async def _progress(tally: Tally, more: int, timeout_s: float, cap: int = EVENTS) -> None:
    """Wait until ``more`` further events (at most ``cap`` in all) have results."""
    target = min(len(tally.ids) + more, cap)
    deadline = time.monotonic() + timeout_s
    while len(tally.ids) < target:
        assert time.monotonic() < deadline, f"stuck at {len(tally.ids)} events with results"
        await asyncio.sleep(0.2)


class Chaos:
    def __init__(
        self,
        consumer: Consumer,
        proxy: ProxyProcess,
        tally: Tally,
        seed: int,
        held_back: Callable[[], Awaitable[None]],
    ) -> None:
        self.consumer, self.proxy, self.tally = consumer, proxy, tally
        self.held_back = held_back
        self.rng = random.Random(seed)
        self.started = time.monotonic()
        self.timeline: list[str] = []

    def note(self, what: str) -> None:
        self.timeline.append(f"{time.monotonic() - self.started:6.1f}s  {what}")

    async def kill_and_restart(self, after_progress: bool) -> None:
        if after_progress:
            await _progress(self.tally, 20, timeout_s=120, cap=EVENTS - HELD_BACK)
        await asyncio.sleep(self.rng.uniform(0.2, 4.0))
        self.consumer.kill()
        self.note(f"SIGKILL #{self.consumer.starts} at {len(self.tally.ids)} events with results")
        self.consumer.start()

    async def working(self, results: int, timeout_s: float) -> None:
        """Until the process started last has published ``results`` results itself, or
        every steady event has one. Counting the tally instead once let late results of
        the process killed before pass for progress: S3 was cut before the new one had
        joined its group, and its first retry came after the test stopped looking."""
        deadline = time.monotonic() + timeout_s
        while len(self.tally.ids) < EVENTS - HELD_BACK:
            if await self.consumer.published() >= results:
                return
            assert time.monotonic() < deadline, f"start #{self.consumer.starts}: no results"
            await asyncio.sleep(0.2)

    async def run(self) -> None:
        self.consumer.start()
        self.note("consumer started")
        await self.kill_and_restart(after_progress=True)
        await self.kill_and_restart(after_progress=True)
        await self.working(results=20, timeout_s=120)
        await self.proxy.block()
        back = time.monotonic() + OUTAGE_S
        self.note(f"S3 unreachable at {len(self.tally.ids)} events with results")
        await self.held_back()
        self.note(f"{HELD_BACK} held-back events produced")
        assert await self.consumer.logged("transient failure", timeout_s=OUTAGE_S - 5)
        # Retries (7.5 s of backoff) normally run out inside the outage: the batch is
        # rewound for a replay. Kill after that if it comes in time, else mid-retry.
        replaying = await self.consumer.logged("will replay", timeout_s=back - time.monotonic() - 4)
        self.note("retries ran out: the batch will be replayed" if replaying else "retrying")
        await self.kill_and_restart(after_progress=False)  # mid-outage
        await asyncio.sleep(back - time.monotonic())
        await self.proxy.unblock()
        self.note(f"S3 back after {OUTAGE_S:.0f}s at {len(self.tally.ids)} events with results")


@pytest.mark.timeout(420)
async def test_chaos_kills_and_an_s3_outage_lose_and_double_count_nothing(
    kafka_broker: Broker,
    s3_server: S3Settings,
    model_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wall = time.monotonic()
    run, seed = uuid.uuid4().hex[:6], int.from_bytes(os.urandom(4), "big")
    settings = Settings(
        _env_file=None,
        kafka=KafkaSettings(
            bootstrap_servers=kafka_broker.bootstrap_servers, topic_prefix=f"c{run}"
        ),
        s3=s3_server,
    )
    await create_topics(kafka_broker.bootstrap_servers, Topics(f"c{run}").all(), partitions=4)
    await _upload(settings, run)
    events = _events(settings.s3.bucket, run)
    tally = Tally()
    host, port = (s3_server.endpoint_url or "").removeprefix("http://").split(":")
    async with ProxyProcess(host, int(port)) as proxy:
        consumer = Consumer(_consumer_env(settings, proxy, tmp_path, model_cache), tmp_path)
        reader = asyncio.create_task(_read_results(settings, tally))
        steady, held = events[:-HELD_BACK], events[-HELD_BACK:]
        chaos = Chaos(consumer, proxy, tally, seed, lambda: _produce(settings, held, over_s=0))
        try:
            producing = asyncio.create_task(_produce(settings, steady))
            await chaos.run()
            await producing
            await _progress(tally, EVENTS, timeout_s=150)
            code, exit_s = await consumer.terminate()
            chaos.note(f"SIGTERM: exit status {code} after {exit_s:.1f}s")
        finally:
            consumer.close()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    await wait_until_committed(settings, Topics(f"c{run}").images, _group(settings), 30)
    vectors = _count_vectors(tmp_path)
    with capsys.disabled():  # the counts belong in the test log
        _report(seed, chaos.timeline, tally, events, vectors, time.monotonic() - wall)
    try:
        _check(tally, events, vectors, code, exit_s, tmp_path)
    except AssertionError:
        with capsys.disabled():
            print(f"consumer log ends:\n{consumer.tail()}")
        raise


def _count_vectors(folder: Path) -> int:
    with VectorStore(MilvusSettings(uri=str(folder / "milvus.db")), "clip_images", 32) as store:
        return store.count()


def _report(
    seed: int,
    timeline: list[str],
    tally: Tally,
    events: list[ImageSubmitted],
    vectors: int,
    wall_s: float,
) -> None:
    distinct_ids = {rid for ids in tally.ids.values() for rid in ids}
    lines = [
        f"chaos seed {seed}",
        *timeline,
        f"events produced                 {len(events)}",
        f"events with a result            {len(tally.ids)}",
        f"result messages on results.v1   {tally.messages}",
        f"  of which redelivered copies   {tally.messages - len(distinct_ids)}",
        f"distinct result ids             {len(distinct_ids)}",
        f"events with >1 result id        {sum(len(ids) > 1 for ids in tally.ids.values())}",
        f"error results                   {len(tally.errors)}",
        f"distinct image ids              {len({e.image_id for e in events})}",
        f"vectors in Milvus               {vectors}",
        f"wall time                       {wall_s:.0f}s",
    ]
    print("\n" + "\n".join(lines), flush=True)


def _check(
    tally: Tally, events: list[ImageSubmitted], vectors: int, code: int, exit_s: float, folder: Path
) -> None:
    assert set(tally.ids) == {e.event_id for e in events}  # every event has a result
    assert all(len(ids) == 1 for ids in tally.ids.values())  # one distinct result id each
    assert tally.errors == []  # kills and the outage never became error results
    assert vectors == len({e.image_id for e in events})
    assert code == 0
    assert exit_s < GRACEFUL_S + 5
    log = (folder / "consumer.log").read_text(errors="replace")
    assert "transient failure" in log  # the outage was retried, never an error result
    assert S3_SECRET not in log
    assert SASL_SECRET not in log
