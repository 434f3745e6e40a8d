"""CPU per S3 read: the consumer's reader against botocore's ``get_object``, with moto
served as ``python -m moto.server`` serves it (werkzeug: every service, a new
connection per request) and as the embedded stack serves it (``consumers/devstack/s3_server.py``:
the S3 backend alone on waitress, keep-alive).

    python -m loadtest.s3_bench [--rounds 40] [--concurrency 32]

Each round reads ``concurrency`` objects (synthetic 640x480 JPEGs) at once, as a
consumer batch does. Prints one JSON line per (server, client): the client's and the
server's CPU milliseconds per GET, from this process and /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from consumers.config.settings import S3Settings
from consumers.devstack.servers import HOST, S3Server
from consumers.pipeline.s3 import S3Store
from loadtest.consumer import cpu_seconds
from loadtest.synth import photo_jpeg

BUCKET = "bench"
Read = Callable[[str], Awaitable[None]]


class MotoServer(S3Server):
    """moto exactly as ``python -m moto.server`` runs it."""

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]


SERVERS: dict[str, type[S3Server]] = {
    "python -m moto.server (werkzeug, Connection: close)": MotoServer,
    "embedded: S3 backend on waitress (keep-alive)": S3Server,
}


async def bench(label: str, rounds: int, concurrency: int) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as runtime:
        server = SERVERS[label](runtime_dir=Path(runtime))
        async with server:
            settings = S3Settings(
                endpoint_url=server.endpoint_url,
                access_key_id="bench",
                secret_access_key="bench",
                allowed_buckets=[BUCKET],
                max_concurrency=concurrency,
            )
            async with S3Store(settings) as s3:
                keys = await _objects(s3, concurrency)
                return [
                    {
                        "server": label,
                        "client": name,
                        **await _measure(read, keys, rounds, server.pid),
                    }
                    for name, read in _readers(s3).items()
                ]


async def _objects(s3: S3Store, count: int) -> list[str]:
    await s3.ensure_bucket(BUCKET)
    keys = [f"k{i}" for i in range(count)]
    for i, key in enumerate(keys):
        await s3.put(BUCKET, key, photo_jpeg(i))
    return keys


def _readers(s3: S3Store) -> dict[str, Read]:
    async def botocore_get(key: str) -> None:
        response = await s3.client.get_object(Bucket=BUCKET, Key=key)
        async with response["Body"] as body:
            await body.read()

    async def store_get(key: str) -> None:
        await s3.get(BUCKET, key)

    return {"botocore get_object": botocore_get, "S3Store.get (presigned, aiohttp)": store_get}


async def _measure(read: Read, keys: list[str], rounds: int, pid: int | None) -> dict[str, float]:
    await asyncio.gather(*(read(key) for key in keys))  # warm: connections, caches
    client, server, wall = time.process_time(), cpu_seconds(pid) or 0.0, time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(read(key) for key in keys))
    per_get = 1000 / (rounds * len(keys))
    return {
        "client_cpu_ms_per_get": round((time.process_time() - client) * per_get, 3),
        "server_cpu_ms_per_get": round(((cpu_seconds(pid) or 0.0) - server) * per_get, 3),
        "wall_ms_per_get": round((time.perf_counter() - wall) * per_get, 3),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="CPU per S3 read, by client and server mode")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    for label in SERVERS:
        for line in asyncio.run(bench(label, args.rounds, args.concurrency)):
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
