"""The presigner against botocore's own presigned URLs, and reads through it from moto."""

from __future__ import annotations

import datetime
import logging
from collections.abc import AsyncIterator
from typing import Any

import aioboto3
import aiohttp
import botocore.auth
import pytest
import yarl
from aiobotocore.config import AioConfig

from consumers.config.settings import S3Settings
from consumers.pipeline.presign import Presigner
from consumers.pipeline.s3 import S3Store

BUCKET = "images"
KEYS = ["plain/key.jpg", "a b/c+d=e&f~g.jpg", "päth/ünï code/😀.png", "x%20y/100%.jpg", "k?q#f"]
NOW = 1_800_000_000.0


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's signers read the time here: one second for every URL of a test."""
    fixed = datetime.datetime.fromtimestamp(NOW, datetime.UTC).replace(tzinfo=None)
    monkeypatch.setattr(botocore.auth.time, "time", lambda: NOW)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: fixed)


async def _client(settings: S3Settings, **config: Any) -> AsyncIterator[tuple[Any, Any]]:
    key_id, secret = settings.access_key_id, settings.secret_access_key
    assert key_id is not None
    assert secret is not None
    session = aioboto3.Session(
        aws_access_key_id=key_id.get_secret_value(),
        aws_secret_access_key=secret.get_secret_value(),
        region_name=settings.region,
    )
    async with session.client(
        "s3", endpoint_url=settings.endpoint_url, config=AioConfig(**config)
    ) as client:
        yield client, await session.get_credentials()


async def _botocore_url(client: Any, key: str) -> str:
    url: str = await client.generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=300
    )
    return url


@pytest.mark.parametrize(
    "config",
    [
        {"s3": {"addressing_style": "path"}},  # what S3Store configures: SigV2 query auth
        {"s3": {"addressing_style": "path"}, "signature_version": "s3v4"},
    ],
    ids=["v2", "v4"],
)
async def test_urls_are_botocores_to_the_byte(
    s3_server: S3Settings, frozen_clock: None, config: dict[str, Any], caplog: Any
) -> None:
    async for client, credentials in _client(s3_server, **config):
        presigner = Presigner(client, credentials, 300)
        with caplog.at_level(logging.INFO, "imagestream.s3"):
            urls = [await presigner.url(BUCKET, key) for key in KEYS]
        assert urls == [await _botocore_url(client, key) for key in KEYS]
        assert f"bucket {BUCKET!r}: signed here" in caplog.text


async def test_addressing_that_signs_another_path_keeps_botocores_presigner(
    s3_server: S3Settings, frozen_clock: None, caplog: Any
) -> None:
    # Virtual-hosted SigV2 signs /bucket/key while the URL's path is /key: the probe
    # finds its own URL differs and leaves the bucket to botocore.
    config = {"s3": {"addressing_style": "virtual"}}
    settings = s3_server.model_copy(update={"endpoint_url": "http://s3.example.test:9000"})
    async for client, credentials in _client(settings, **config):
        presigner = Presigner(client, credentials, 300)
        with caplog.at_level(logging.INFO, "imagestream.s3"):
            urls = [await presigner.url(BUCKET, key) for key in KEYS]
        assert urls == [await _botocore_url(client, key) for key in KEYS]
        assert f"bucket {BUCKET!r}: botocore's presigner" in caplog.text


async def test_store_reads_through_presigned_urls(s3_server: S3Settings) -> None:
    async with S3Store(s3_server) as store:
        for i, key in enumerate(KEYS):
            await store.put(BUCKET, key, f"object {i}".encode())
        assert [await store.get(BUCKET, key) for key in KEYS] == [
            f"object {i}".encode() for i in range(len(KEYS))
        ]
        # The URL a read uses fetches that object and no other.
        url = await Presigner(store.client, None, 300).url(BUCKET, KEYS[1])
        async with (
            aiohttp.ClientSession() as http,
            http.get(yarl.URL(url, encoded=True)) as response,
        ):
            assert await response.read() == b"object 1"
