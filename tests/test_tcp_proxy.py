"""The test proxy (tests/tcp_proxy.py): a cut refuses new connections and resets open
ones, the proxy comes back on the same port, and a cut amid a burst of connects leaves
no connection for the garbage collector."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import sys

import pytest

from tests.tcp_proxy import HOST, ProxyProcess, TcpProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def _round_trip(port: int) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"ping")
    return await reader.readexactly(4), reader, writer


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_a_cut_refuses_and_resets_and_the_proxy_returns_on_its_port() -> None:
    server = await asyncio.start_server(_echo, HOST, 0)
    try:
        async with ProxyProcess(HOST, server.sockets[0].getsockname()[1]) as proxy:
            echoed, reader, writer = await _round_trip(proxy.port)
            assert echoed == b"ping"
            await proxy.block()
            with contextlib.suppress(ConnectionError):
                assert await reader.read() == b""  # the open connection is cut
            await _close(writer)
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(HOST, proxy.port)
            await proxy.unblock()
            echoed, _, writer = await _round_trip(proxy.port)
            assert echoed == b"ping"
            await _close(writer)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_cut_amid_a_burst_of_connects_leaves_no_connection_unclosed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    leaked: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda hook: leaked.append(str(hook.exc_value)))
    server = await asyncio.start_server(_echo, HOST, 0)
    try:
        async with TcpProxy(HOST, server.sockets[0].getsockname()[1]) as proxy:
            clients = [socket.create_connection((HOST, proxy.port)) for _ in range(8)]
            # asyncio.start_server accepts the burst on the loop's next turn and sets the
            # connections up on the turn after: the cut lands between the two, where
            # CPython 3.11 dropped them unclosed ("unclosed transport" once collected).
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            await proxy.block()
        for client in clients:
            client.close()
    finally:
        server.close()
        await server.wait_closed()
    gc.collect()
    assert leaked == []
