"""A loopback TCP proxy a test can cut: the way to make a real server unreachable.

``block()`` closes the listening socket and aborts every open connection, so clients
see "connection refused" (new connections) or a reset (pooled ones), exactly as when
the server host goes away; ``unblock()`` listens again on the same port.

Tests run it as a child process (``ProxyProcess``), driven over its stdin, rather than
on pytest's event loop. In a fresh-clone CI run two of its accepted connections reached
the garbage collector unclosed, one of them "read=polling": its descriptor was still
watched by the loop, which points at a descriptor closed and reused underneath it (the
cause was not found). Their ResourceWarnings, unraisable under ``filterwarnings =
error``, failed the chaos test after all of its checks had passed. In a child process a
network element's bookkeeping can no longer fail the test that uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path
from typing import IO, Any, Self

from consumers.servers import die_with_parent

HOST = "127.0.0.1"
_CHUNK = 65536
_ROOT = Path(__file__).resolve().parent.parent
_ANSWER_TIMEOUT_S = 30.0


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def blocked(self) -> bool:
        return self._server is None

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._accepted, HOST, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def block(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def unblock(self) -> None:
        if self._server is None:
            await self.start()

    async def stop(self) -> None:
        await self.block()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Each connection's handler aborts its two sockets once its pumps end: wait for
        # it, or the loop can close first and leave them to the garbage collector
        # ("unclosed transport", seen in CI); aborts close on the next turn.
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await asyncio.sleep(0)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback runs as the connection is accepted, so a connection is known
        # (to block() and stop()) before its handler's first step: a handler that
        # registered itself could still be waiting to start when the loop closed.
        self._writers.add(writer)
        handler = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sides = [writer]
        try:
            if self.blocked:  # cut between the accept and this first step
                return
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            sides.append(upstream_writer)
            self._writers.add(upstream_writer)
            if self.blocked:  # cut while this connected upstream
                return
            pumps = [
                asyncio.create_task(_pump(reader, upstream_writer)),
                asyncio.create_task(_pump(upstream_reader, writer)),
            ]
            self._tasks.update(pumps)
            try:
                await asyncio.gather(*pumps, return_exceptions=True)
            finally:
                self._tasks.difference_update(pumps)
        finally:
            self._writers.difference_update(sides)
            for side in sides:
                side.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()


class ProxyProcess:
    """A ``TcpProxy`` in a child process, with the same API: ``url``, ``block()``,
    ``unblock()``, and ``async with`` to start and stop it."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self) -> Self:
        host, port = self.target
        # Popen here, not in a worker thread: the death signal follows the spawning thread.
        self._process = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "tests.tcp_proxy", host, str(port)], cwd=_ROOT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=die_with_parent(),  # noqa: PLW1509
        )  # fmt: skip
        self.port = int(await self._answer())
        return self

    async def block(self) -> None:
        await self._command("block")

    async def unblock(self) -> None:
        await self._command("unblock")

    async def stop(self) -> None:
        """Close its stdin: it aborts its connections and exits."""
        process, self._process = self._process, None
        if process is None:
            return
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # a dead child's stdin: broken pipe
                    pipe.close()
        try:
            await asyncio.to_thread(process.wait, _ANSWER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _command(self, verb: str) -> None:
        stdin = self._pipe("stdin")
        stdin.write(verb + "\n")
        stdin.flush()
        answer = await self._answer()
        if answer != verb:
            raise RuntimeError(f"proxy process answered {answer!r} to {verb!r}")

    async def _answer(self) -> str:
        stdout = self._pipe("stdout")
        line = await asyncio.wait_for(asyncio.to_thread(stdout.readline), _ANSWER_TIMEOUT_S)
        if not line:
            raise RuntimeError("the proxy process exited")
        return line.strip()

    def _pipe(self, name: str) -> IO[str]:
        pipe: IO[str] | None = getattr(self._process, name, None)
        if pipe is None:
            raise RuntimeError("the proxy process is not running")
        return pipe


async def _serve(target_host: str, target_port: int) -> None:
    """The child: print the port, then obey ``block``/``unblock`` lines until stdin ends."""
    async with TcpProxy(target_host, target_port) as proxy:
        print(proxy.port, flush=True)
        actions = {"block": proxy.block, "unblock": proxy.unblock}
        while line := await asyncio.to_thread(sys.stdin.readline):
            verb = line.strip()
            await actions[verb]()
            print(verb, flush=True)


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1], int(sys.argv[2])))
