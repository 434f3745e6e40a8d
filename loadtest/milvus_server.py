"""A real Milvus standalone server from the PyPI package ``milvus`` (``pip install milvus``).

Its data, logs and unpacked binaries go to a folder of ours (a temporary one by default)
instead of ``~/.milvus.io``, so every run starts empty. Components advertise 127.0.0.1
to each other. Milvus 2.3's gRPC servers have no bind-address setting and listen on
every interface (etcd alone binds loopback); use it on a machine without untrusted
neighbours, as these benchmarks do. Start-up takes 10-20 s.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from consumers.devstack.servers import HOST

COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")


class RunningMilvus(NamedTuple):
    uri: str  # http://127.0.0.1:<port>
    pid: int | None  # the server process, for its CPU time


class MilvusUnavailable(RuntimeError):
    """The ``milvus`` package is missing or its server did not start."""


def _server_class() -> Any:
    try:
        from milvus import MilvusServer  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError as exc:
        raise MilvusUnavailable(
            "the Milvus server benchmark needs the `milvus` package: "
            "pip install 'imagestream[bench]' (or pip install milvus)"
        ) from exc
    return MilvusServer


@contextlib.contextmanager
def milvus_server(base_dir: Path | None = None) -> Iterator[RunningMilvus]:
    """Start a standalone server, yield its URI and process id, stop it."""
    owned = base_dir is None
    folder = base_dir or Path(tempfile.mkdtemp(prefix="imagestream-milvus-"))
    server = _server_class()()
    server.set_base_dir(str(folder))
    for component in COMPONENTS:
        server.config.set(f"{component}.ip", HOST)
    try:
        try:
            with _start_lock(), warnings.catch_warnings():
                # Its port search drops probe sockets unclosed when a port is taken.
                warnings.simplefilter("ignore", ResourceWarning)
                server.start()  # returns once /healthz answers
        except (TimeoutError, RuntimeError) as exc:
            tail = _log_tail(folder)
            raise MilvusUnavailable(f"Milvus server did not start: {exc}\n{tail}") from exc
        process = getattr(server, "server_proc", None)
        yield RunningMilvus(f"http://{HOST}:{server.listen_port}", getattr(process, "pid", None))
    finally:
        _stop(server)
        if owned:
            shutil.rmtree(folder, ignore_errors=True)


def _stop(server: Any, grace_s: float = 30.0) -> None:
    """Stop the server, waiting longer than the package's own ``stop()`` does.

    That one gives the process 1 s after SIGTERM and 3 s after SIGKILL and raises past
    them: on a loaded machine a server flushing its segments takes longer.
    """
    process = getattr(server, "server_proc", None)
    if process is not None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=grace_s)
    server.stop()  # the process is gone: this closes its log files


@contextlib.contextmanager
def _start_lock() -> Iterator[None]:
    """Serialise start-ups across processes (parallel test workers, benchmarks).

    The server picks its ports by probing for free ones and binds them only later, so two
    servers starting at once can pick the same port; once one has started, its ports are
    bound and the next probe skips them.
    """
    path = Path(tempfile.gettempdir()) / "imagestream-milvus-start.lock"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _log_tail(folder: Path, lines: int = 20) -> str:
    """The folder is removed on the way out: quote its log in the error instead."""
    log = folder / "logs" / "milvus-stderr.log"
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {log})"
