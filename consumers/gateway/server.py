"""Serving the gateway with uvicorn: ``imagestream gateway`` and inside ``imagestream up``."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import uvicorn

from consumers.config.settings import Settings
from consumers.gateway.app import create_app
from consumers.gateway.runtime import GatewayRuntime
from consumers.ops.signals import stop_event

log = logging.getLogger("imagestream.gateway")


class _Server(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The command that runs the gateway owns SIGINT/SIGTERM (consumers.ops.signals).
        yield


@dataclass(frozen=True)
class RunningGateway:
    url: str
    runtime: GatewayRuntime


def _bind(host: str, port: int, any_port_if_busy: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        if not any_port_if_busy:
            sock.close()
            raise
        sock.bind((host, 0))
    return sock


@asynccontextmanager
async def running_gateway(
    settings: Settings, any_port_if_busy: bool = False
) -> AsyncIterator[RunningGateway]:
    """Serve until the context exits; raises if the app cannot start (Kafka, S3, topics)."""
    gateway = settings.gateway
    runtime = GatewayRuntime(settings)
    app = create_app(settings, runtime)
    app.state.check_exposure()  # before binding: no keys on a network address, no gateway
    sock = _bind(gateway.host, gateway.port, any_port_if_busy)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if serving.done():
                raise RuntimeError("the gateway did not start; its error is logged above")
            await asyncio.sleep(0.02)
        url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        log.info("gateway on %s (OpenAPI: %s/docs)", url, url)
        yield RunningGateway(url, runtime)
    finally:
        server.should_exit = True
        await serving
        sock.close()


async def run_gateway(settings: Settings) -> None:
    """``imagestream gateway``: until SIGINT or SIGTERM."""
    stop = stop_event()
    async with running_gateway(settings) as gateway:
        print(f"gateway    {gateway.url}  (OpenAPI {gateway.url}/docs)", flush=True)
        await stop.wait()
