"""A loopback TCP proxy a test can cut: the way to make a real server unreachable.

``block()`` closes the listening socket and aborts every open connection, so clients
see "connection refused" (new connections) or a reset (pooled ones), exactly as when
the server host goes away; ``unblock()`` listens again on the same port.

It accepts connections itself (``loop.sock_accept``) rather than through
``asyncio.start_server``: CPython 3.11's ``Server._attach()`` asserts when a connection
accepted just before ``close()`` is set up just after it, and the half-built transport
is dropped unclosed (python/cpython#109564, open). Its ResourceWarnings, unraisable
under ``filterwarnings = error``, failed the chaos test in CI after all of its checks
had passed.

Tests also run it as a child process (``ProxyProcess``, driven over its stdin), so that
a network element's bookkeeping shares neither pytest's event loop nor its garbage
collector with the test that cuts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO, Any, Self

from consumers.devstack.servers import die_with_parent

HOST = "127.0.0.1"
_CHUNK = 65536
_ROOT = Path(__file__).resolve().parent.parent
_ANSWER_TIMEOUT_S = 30.0


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def blocked(self) -> bool:
        return self._listener is None

    async def start(self) -> Self:
        # Its own accept loop, not asyncio.start_server: see the module's docstring.
        listener = socket.create_server((HOST, self.port))
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._acceptor = asyncio.get_running_loop().create_task(self._accept(listener))
        return self

    async def block(self) -> None:
        listener, acceptor = self._listener, self._acceptor
        self._listener = self._acceptor = None
        if listener is not None and acceptor is not None:
            # A shutdown fails the pending accept: a cancel could drop a connection that
            # was already accepted for it.
            listener.shutdown(socket.SHUT_RDWR)
            await acceptor
            listener.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def unblock(self) -> None:
        if self._listener is None:
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

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, _ = await loop.sock_accept(listener)
            except OSError:  # block() shut the listener down
                return
            # Known to stop() at once, whatever the handler's first step finds.
            handler = loop.create_task(self._serve(connection))
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)

    async def _serve(self, connection: socket.socket) -> None:
        sides: list[asyncio.StreamWriter] = []
        try:
            if self.blocked:  # cut between the accept and this first step
                return
            reader, writer = await asyncio.open_connection(sock=connection)
            sides.append(writer)
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            sides.append(upstream_writer)
            self._writers.update(sides)
            if self.blocked:  # cut while this connected
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
        except OSError:
            return
        finally:
            self._writers.difference_update(sides)
            for side in sides:
                side.transport.abort()
            if not sides:  # no transport owns it yet
                connection.close()


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


async def _child(target_host: str, target_port: int) -> None:
    """The child: print the port, then obey ``block``/``unblock`` lines until stdin ends."""
    async with TcpProxy(target_host, target_port) as proxy:
        print(proxy.port, flush=True)
        actions = {"block": proxy.block, "unblock": proxy.unblock}
        while line := await asyncio.to_thread(sys.stdin.readline):
            verb = line.strip()
            await actions[verb]()
            print(verb, flush=True)


if __name__ == "__main__":
    asyncio.run(_child(sys.argv[1], int(sys.argv[2])))
