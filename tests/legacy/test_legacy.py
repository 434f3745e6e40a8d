"""The legacy adapter against an emulator of seed 000's backend, through the real stack
(Tansu, moto S3 server, milvus-lite, a random:tiny CLIP consumer)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from consumers.config.settings import LegacySettings, S3Settings, Settings
from consumers.devstack.launcher import running_consumers
from consumers.devstack.servers import Broker
from consumers.legacy.adapter import legacy_adapter
from consumers.legacy.resend import outstanding, resend_command
from consumers.pipeline.s3 import S3Store
from consumers.worker.kafka import client_kwargs, started
from loadtest.legacy_backend import LegacyBackend
from schemas.events import CallbackFailed
from schemas.topics import Topics
from tests.stack_settings import clip_only_settings, settings_env, small_jpegs
from tests.tcp_proxy import ProxyProcess

pytestmark = pytest.mark.integration
MODEL = "clip-vit"  # the legacy MODEL_NAME the CLIP jobs are polled under


@pytest.fixture(scope="module")
async def backend() -> AsyncIterator[LegacyBackend]:
    running = await LegacyBackend().start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture(scope="module")
async def settings(
    kafka_broker: Broker,
    s3_server: S3Settings,
    tmp_path_factory: pytest.TempPathFactory,
    backend: LegacyBackend,
) -> AsyncIterator[Settings]:
    legacy = LegacySettings(
        polling_url=backend.url,
        model_names={"clip": MODEL},
        idle_sleep_s=0.2,
        jitter_s=0.2,
        download_networks=["127.0.0.0/8"],  # the emulator is on loopback
        callback_networks=["127.0.0.0/8"],
        allowed_hosts=["127.0.0.1"],
        callback_backoff_s=0.3,
        callback_backoff_max_s=3.0,
        # The outage test's budgets: below its outage, so that it runs every waiting path.
        callback_attempts=4,
        source_wait_s=120.0,
        source_backoff_max_s=4.0,
        resend_backoff_s=1.0,
        resend_backoff_max_s=4.0,
    )
    folder = tmp_path_factory.mktemp("legacy")
    live = await clip_only_settings(
        kafka_broker.bootstrap_servers, s3_server, folder, legacy=legacy
    )
    async with running_consumers(live, ["clip"]):
        yield live


@pytest.fixture
async def adapter(settings: Settings) -> AsyncIterator[None]:
    async with legacy_adapter(settings):
        yield


async def upload(settings: Settings, images: dict[str, bytes]) -> dict[str, str]:
    async with S3Store(settings.s3) as s3:
        for key, data in images.items():
            await s3.put(settings.s3.bucket, key, data, content_type="image/jpeg")
    return {key: f"s3://{settings.s3.bucket}/{key}" for key in images}


async def failed_callbacks(
    settings: Settings, wait_for: str | set[str] | None = None, timeout_s: float = 30
) -> dict[str, CallbackFailed]:
    """What the failed-callbacks topic holds, once it has ``wait_for`` (legacy ids)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    wanted = {wait_for} if isinstance(wait_for, str) else wait_for or set()
    found = await _read_failed(settings)
    while not wanted <= found.keys() and loop.time() < deadline:
        await asyncio.sleep(1)
        found = await _read_failed(settings)
    return found


async def _read_failed(settings: Settings) -> dict[str, CallbackFailed]:
    topic = Topics(settings.kafka.topic_prefix).callbacks_failed
    reader = AIOKafkaConsumer(**client_kwargs(settings.kafka), enable_auto_commit=False)
    async with started(reader):
        await reader.topics()
        tps = [TopicPartition(topic, p) for p in reader.partitions_for_topic(topic) or ()]
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        ends = await reader.end_offsets(tps)
        found: dict[str, CallbackFailed] = {}
        while any([await reader.position(tp) < ends[tp] for tp in tps]):
            for records in (await reader.getmany(timeout_ms=1000)).values():
                for record in records:
                    failed = CallbackFailed.model_validate_json(record.value)
                    found[failed.legacy_id] = failed
        return found


async def left_to_resend(settings: Settings, job_ids: set[str]) -> set[str]:
    """Those of ``job_ids`` that ``imagestream legacy resend`` would send (given a few
    seconds for the loop's commit after its last delivery)."""
    for _ in range(10):
        chosen = await outstanding(settings, hours=None, include_refused=False)
        left = job_ids & {failed.legacy_id for failed in chosen}
        if not left:
            break
        await asyncio.sleep(0.5)
    return left


def assert_legacy_shape(backend: LegacyBackend, job_id: str, known: set[str]) -> list[str]:
    """Every callback of ``job_id`` is a GET with {"result": [[own id, neighbours...]]}."""
    for callback in backend.callbacks[job_id]:
        assert callback.method == "GET"
        assert callback.content_type == "application/json"
        assert list(callback.body) == ["result"], callback.body
        (ids,) = callback.body["result"]
        assert ids[0] == job_id
        assert len(ids) == len(set(ids)) <= 20
        assert set(ids) <= known
    ids: list[str] = backend.callbacks[job_id][-1].body["result"][0]
    return ids


async def test_jobs_are_answered_at_their_callbacks_in_the_legacy_shape(
    settings: Settings, backend: LegacyBackend, adapter: None, s3_server: S3Settings
) -> None:
    run = uuid.uuid4().hex[:6]
    uris = await upload(settings, {f"{run}/{n}.jpg": d for n, d in enumerate(small_jpegs(24, 1))})
    paths = list(uris.values())
    # An http URL of the S3 endpoint is read as bucket/key, not downloaded; any other URL
    # is downloaded from an allowed host and staged into the bucket.
    paths[1] = f"{s3_server.endpoint_url}/{paths[1].removeprefix('s3://')}"
    paths[2] = backend.add_file(f"{run}.jpg", small_jpegs(1, 99)[0])
    good = [backend.add_job(MODEL, f"{run}-{n}", path)["id"] for n, path in enumerate(paths)]
    bad = {
        "missing": (f"s3://{settings.s3.bucket}/{run}/nothing.jpg", "object_not_found"),
        "metadata": ("http://169.254.169.254/latest/meta-data/", "source_not_allowed"),
        "file": ("file:///etc/passwd", "source_not_allowed"),
        "other-host": (
            f"http://localhost:{backend.url.rsplit(':', 1)[1]}/x.jpg",
            "source_not_allowed",
        ),
        "redirect": (backend.add_redirect("meta", "http://169.254.169.254/"), "source_not_allowed"),
        "no-path": ("", "invalid_event"),
    }
    for name, (uri, _) in bad.items():
        backend.add_job(MODEL, f"{run}-{name}", uri)
    rejected = f"{run}-rejected"  # its backend answers the callback with 404
    backend.failing[rejected] = 404
    backend.add_job(MODEL, rejected, uris[f"{run}/3.jpg"])

    assert await backend.wait_for_callbacks(set(good), timeout_s=90) == set()
    lengths = [len(assert_legacy_shape(backend, job_id, backend.added)) for job_id in good]
    assert max(lengths) == 20, lengths  # the own id + 19 neighbours, as n_results=20 gave
    names = {f"{run}-{name}": code for name, (_, code) in bad.items()}
    assert await backend.wait_for_callbacks(set(names), timeout_s=30) == set()
    for job_id, code in names.items():
        (callback,) = backend.callbacks[job_id]
        assert callback.body["result"] == [[]]
        assert callback.body["error"]["code"] == code, callback.body
    failed = await failed_callbacks(settings, wait_for=rejected)
    assert failed[rejected].attempts == 1
    assert failed[rejected].error == "HTTP 404 (not retried)"
    assert failed[rejected].body["result"][0][0] == rejected
    print(f"\n{len(good)} jobs answered in the legacy shape; ids per callback: {lengths}")


OUTAGE_S = 62.0  # longer than any single budget of the adapter before this test's


def through(settings: Settings, s3: ProxyProcess) -> Settings:
    """``settings`` with S3 reached through the proxy ``s3``."""
    return settings.model_copy(
        update={"s3": settings.s3.model_copy(update={"endpoint_url": s3.url})}
    )


async def test_sources_and_callbacks_down_for_over_a_minute_are_waited_out(
    settings: Settings, backend: LegacyBackend, s3_server: S3Settings
) -> None:
    """The download host, the adapter's S3 and the callback target go down together
    for OUTAGE_S: s3:// jobs are processed meanwhile and their failed callbacks re-sent
    in rounds; jobs that need the source wait for it; once all is back every job hears
    its real answer, and none an error."""
    run = uuid.uuid4().hex[:6]
    uris = await upload(settings, {f"{run}/{n}.jpg": d for n, d in enumerate(small_jpegs(3, 2))})
    main_port = int(backend.url.rsplit(":", 1)[1])
    s3_port = int((s3_server.endpoint_url or "").rsplit(":", 1)[1])
    async with (
        ProxyProcess("127.0.0.1", main_port) as source,
        ProxyProcess("127.0.0.1", s3_port) as s3,
    ):
        files = [backend.add_file(f"{run}-{n}.jpg", d) for n, d in enumerate(small_jpegs(3, 5))]
        for proxy in (source, s3):
            await proxy.block()
        await backend.callbacks_down()
        loop = asyncio.get_running_loop()
        async with legacy_adapter(through(settings, s3)):
            down_at = loop.time()
            direct = {
                backend.add_job(MODEL, f"{run}-s3-{n}", u)["id"]
                for n, u in enumerate(uris.values())
            }
            # Two downloads through the cut source; one from the live backend, staged into
            # S3 through the cut proxy.
            fetched = [f.replace(backend.url, source.url) for f in files[:2]]
            waiting = {
                backend.add_job(MODEL, f"{run}-dl-{n}", f)["id"] for n, f in enumerate(fetched)
            }
            waiting.add(backend.add_job(MODEL, f"{run}-staged", files[2])["id"])
            # Meanwhile the s3:// jobs are answered, and their callbacks fail and are re-sent.
            try:
                resent = await failed_callbacks(settings, direct, timeout_s=OUTAGE_S - 10)
                assert direct <= set(resent), resent.keys()
                await asyncio.sleep(OUTAGE_S - (loop.time() - down_at))
                assert not (direct | waiting) & set(backend.callbacks)
            finally:  # the module's other tests share the backend: never leave it down
                for proxy in (source, s3):
                    await proxy.unblock()
                await backend.callbacks_up()
            up_at = loop.time()
            assert await backend.wait_for_callbacks(direct | waiting, timeout_s=40) == set()
            answered_in = loop.time() - up_at
    assert up_at - down_at >= 60
    for job_id in direct | waiting:  # the real answer, never `unavailable`
        assert_legacy_shape(backend, job_id, backend.added)
    failed = await failed_callbacks(settings)
    rounds = {job_id: failed[job_id].resends for job_id in direct}
    assert min(rounds.values()) >= 5, rounds  # re-sent in rounds all through the outage
    assert not waiting & set(failed)  # those waited for their source, then were delivered
    assert await left_to_resend(settings, direct) == set()  # `legacy resend` leaves them be
    print(
        f"\n{OUTAGE_S:.0f} s outage: {len(direct | waiting)} jobs answered {answered_in:.1f} s "
        f"after recovery; re-send rounds per s3:// job during it: {rounds}"
    )


async def test_a_source_down_past_source_wait_s_is_answered_unavailable(
    settings: Settings, backend: LegacyBackend
) -> None:
    short = settings.legacy.model_copy(update={"source_wait_s": 3.0, "source_backoff_s": 0.5})
    job_id = f"{uuid.uuid4().hex[:6]}-gone"
    async with ProxyProcess("127.0.0.1", int(backend.url.rsplit(":", 1)[1])) as source:
        await source.block()
        async with legacy_adapter(settings.model_copy(update={"legacy": short})):
            started = asyncio.get_running_loop().time()
            backend.add_job(MODEL, job_id, f"{source.url}/files/never.jpg")
            assert await backend.wait_for_callbacks({job_id}, timeout_s=30) == set()
            waited = asyncio.get_running_loop().time() - started
    (callback,) = backend.callbacks[job_id]
    assert callback.body["error"]["code"] == "unavailable", callback.body
    assert "unavailable for 3 s" in callback.body["error"]["message"]
    assert waited >= 3.0


async def test_legacy_resend_sends_refused_callbacks_again_on_demand(
    settings: Settings, backend: LegacyBackend, adapter: None
) -> None:
    """A 404 is not re-sent by the loop; ``imagestream legacy resend --include-refused``
    sends it once the backend is fixed."""
    run = uuid.uuid4().hex[:6]
    (uri,) = (await upload(settings, {f"{run}/0.jpg": small_jpegs(1, 7)[0]})).values()
    job_id = f"{run}-refused"
    backend.failing[job_id] = 404
    backend.add_job(MODEL, job_id, uri)
    failed = await failed_callbacks(settings, wait_for=job_id)
    assert not failed[job_id].retriable
    del backend.failing[job_id]
    await resend_command(settings, None, include_refused=False, dry_run=False)
    assert job_id not in backend.callbacks  # refused for good: only when asked for
    await resend_command(settings, 1.0, include_refused=True, dry_run=True)
    assert job_id not in backend.callbacks
    await resend_command(settings, 1.0, include_refused=True, dry_run=False)
    assert assert_legacy_shape(backend, job_id, backend.added)[0] == job_id


class Halves:
    """The poller and the sender as two ``imagestream legacy --only ...`` processes."""

    def __init__(self, settings: Settings, folder: Path) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESTREAM_")}
        self.env = base | settings_env(settings, ("kafka", "s3", "milvus", "legacy"))
        # A killed sender leaves a member the group waits for until its session times out.
        self.env |= {"IMAGESTREAM_KAFKA__SESSION_TIMEOUT_MS": "3000"}
        self.env |= {"IMAGESTREAM_KAFKA__HEARTBEAT_INTERVAL_MS": "500"}
        self.folder = folder
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, half: str) -> None:
        with (self.folder / f"{half}.log").open("ab") as log:
            self.procs[half] = subprocess.Popen(
                [sys.executable, "-m", "consumers.cli", "legacy", "--only", half],
                cwd=self.folder, env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def kill(self, half: str) -> None:
        self.procs[half].send_signal(signal.SIGKILL)
        self.procs[half].wait()

    def close(self) -> None:
        for half in self.procs:
            self.kill(half)

    def logs(self) -> str:
        return "\n".join((self.folder / f"{h}.log").read_text()[-3000:] for h in self.procs)


async def test_killing_the_poller_and_the_sender_mid_run_loses_no_job(
    settings: Settings, backend: LegacyBackend, tmp_path: Path
) -> None:
    """Jobs trickle in for 24 s while the halves are SIGKILLed and restarted at random
    moments: the poller, then the sender, then both."""
    seed = random.randrange(1 << 16)
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:6]
    images = {f"{run}/{n}.jpg": data for n, data in enumerate(small_jpegs(30, 3))}
    uris = list((await upload(settings, images)).values())
    backend.reoffer_after_s = 10.0  # a job handed out but never called back comes back
    halves = Halves(settings, tmp_path)
    jobs: set[str] = set()
    kills = []

    async def feed() -> None:
        for n, uri in enumerate(uris):
            jobs.add(backend.add_job(MODEL, f"{run}-{n}", uri)["id"])
            await asyncio.sleep(0.8)

    try:
        for half in ("poller", "sender"):
            halves.start(half)
        feeding = asyncio.create_task(feed())
        # Both halves at work (a first callback), then kills while jobs still arrive.
        await backend.wait_for_callbacks(jobs, timeout_s=60, at_least=1)
        for victims in (["poller"], ["sender"], ["poller", "sender"]):
            await asyncio.sleep(rng.uniform(1.0, 4.0))
            for half in victims:
                halves.kill(half)
                kills.append((half, len(jobs & backend.callbacks.keys())))
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            for half in victims:
                halves.start(half)
        await feeding
        missing = await backend.wait_for_callbacks(jobs, timeout_s=90)
    finally:
        halves.close()
        backend.reoffer_after_s = None
    assert missing == set(), f"seed {seed}, kills {kills}\n{halves.logs()}"
    for job_id in jobs:
        assert_legacy_shape(backend, job_id, backend.added)
    repeats = sum(len(backend.callbacks[j]) - 1 for j in jobs)
    print(
        f"\nseed {seed}: {len(jobs)} jobs, all answered; SIGKILLs (half, jobs answered by "
        f"then): {kills}; jobs handed out {backend.handed_out} times; repeated callbacks {repeats}"
    )
