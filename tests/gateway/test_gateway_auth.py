"""Gateway keys and tenancy through the real stack: uvicorn on loopback, a CLIP consumer
(random:tiny) over Tansu, uploads in moto S3, rows in milvus-lite.

Two tenants' keys try to read, search, overwrite and learn of each other's images and
results through every endpoint, and through an event naming the other's staged upload.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from consumers.cli.main import main
from consumers.config.settings import GatewaySettings, S3Settings, Settings
from consumers.devstack.launcher import running_consumers
from consumers.devstack.servers import Broker
from consumers.gateway.api_keys import (
    ApiKeyRecord,
    AuthSettings,
    Scope,
    append_key,
    digest,
    new_key,
)
from consumers.gateway.auth import RateLimiter
from consumers.gateway.server import running_gateway
from consumers.pipeline.item_errors import ConfigError
from tests.helpers import event, produce_events
from tests.stack_settings import clip_only_settings, small_jpegs

pytestmark = pytest.mark.integration
ALL = [Scope.INGEST, Scope.SEARCH]
NORTH, NORTH_RECORD = new_key(["north"], ALL)
SOUTH, SOUTH_RECORD = new_key(["south", "east"], ALL)  # written to a keys file below
INGEST_ONLY, INGEST_RECORD = new_key(["north"], [Scope.INGEST])
LIMITED, LIMITED_RECORD = new_key(["north"], [Scope.INGEST], rate_per_s=0.2, burst=2)
ADMIN, ADMIN_RECORD = new_key([], [Scope.ADMIN])
# Ids that spell another tenant's key or staging path, and their escapes.
SHARED_IDS = ["x", "north/x", "t-north/images/x", "%2F", "../x", "shared"]
Gateway = tuple[Settings, str, aiohttp.ClientSession]


def auth(key: str, style: str = "bearer") -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if style == "bearer" else {"X-API-Key": key}


def records(*records: ApiKeyRecord) -> list[ApiKeyRecord]:
    return list(records)


@pytest.fixture(scope="module")
async def gateway(
    kafka_broker: Broker, s3_server: S3Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    folder = tmp_path_factory.mktemp("auth")
    append_key(folder / "keys.json", SOUTH_RECORD)
    keys = records(NORTH_RECORD, INGEST_RECORD, LIMITED_RECORD, ADMIN_RECORD)
    limits = GatewaySettings(
        port=0, request_timeout_s=30, auth=AuthSettings(keys=keys, keys_file=folder / "keys.json")
    )
    settings = await clip_only_settings(
        kafka_broker.bootstrap_servers, s3_server, folder, gateway=limits
    )
    timeout = aiohttp.ClientTimeout(total=60)
    async with (
        running_consumers(settings, ["clip"]),
        running_gateway(settings) as running,
        aiohttp.ClientSession(timeout=timeout) as http,
    ):
        yield settings, running.url, http


async def call(
    http: aiohttp.ClientSession, method: str, url: str | URL, **kwargs: Any
) -> tuple[int, Any, Any]:
    async with http.request(method, url, **kwargs) as response:
        is_json = response.content_type == "application/json"
        body = await response.json() if is_json else await response.read()
        return response.status, response.headers.copy(), body


async def upload(
    http: aiohttp.ClientSession, url: str, key: str, image_id: str, data: bytes
) -> Any:
    form = aiohttp.FormData()
    form.add_field("image", data, filename="a.jpg", content_type="image/jpeg")
    form.add_field("image_id", image_id)
    form.add_field("top_k", "50")
    status, _, body = await call(
        http, "POST", f"{url}/v1/images?wait=true", data=form, headers=auth(key)
    )
    assert status == 200, body
    return body


ROUTES = [
    ("POST", "/v1/images"), ("POST", "/v1/embeddings"), ("POST", "/v1/labels"),
    ("GET", "/v1/results/x"), ("POST", "/v1/search"), ("GET", "/demo/images/x"),
    ("GET", "/v1/no-such-route"),
]  # fmt: skip


async def test_without_a_valid_key_every_route_answers_401(gateway: Gateway) -> None:
    _, url, http = gateway
    wrong = [
        {},
        auth("isk_nothing_here"),
        auth(NORTH[:-1] + ("A" if NORTH[-1] != "A" else "B")),  # one character off
        {"Authorization": f"Basic {NORTH}"},
        auth(NORTH_RECORD.sha256, "header"),  # the stored hash is not a key
        {"X-API-Key": ""},
    ]
    for (method, path), headers in ((r, h) for r in ROUTES for h in wrong):
        status, response_headers, body = await call(http, method, url + path, headers=headers)
        assert status == 401, (method, path, headers, body)
        assert body["error"]["code"] == "unauthorized"
        assert response_headers["WWW-Authenticate"].startswith("Bearer")
    for path in ("/healthz", "/readyz", "/demo", "/openapi.json"):
        assert (await call(http, "GET", url + path))[0] == 200, path
    # Both header styles carry a key (404: no such result, but the key was accepted).
    for style in ("bearer", "header"):
        assert (await call(http, "GET", f"{url}/v1/results/x", headers=auth(NORTH, style)))[
            0
        ] == 404


async def test_a_tenant_or_scope_outside_the_key_is_403(gateway: Gateway) -> None:
    _, url, http = gateway
    form = aiohttp.FormData()
    form.add_field("image", small_jpegs(1, 1)[0], filename="a.jpg", content_type="image/jpeg")
    form.add_field("collection", "south")
    denied = [
        (NORTH, "POST", "/v1/images", {"data": form}),
        (NORTH, "POST", "/v1/search", {"json": {"text": "a", "collection": "south"}}),
        (NORTH, "GET", "/v1/results/x?collection=south", {}),
        (NORTH, "GET", "/demo/images/x?collection=south", {}),
        (SOUTH, "GET", "/v1/results/x?collection=north", {}),
        (INGEST_ONLY, "POST", "/v1/search", {"json": {"text": "a"}}),
        (INGEST_ONLY, "GET", "/demo/images/x", {}),
    ]
    for key, method, path, kwargs in denied:
        status, _, body = await call(http, method, url + path, headers=auth(key), **kwargs)
        assert status == 403, (path, body)
        assert body["error"]["code"] == "forbidden"
    faces = aiohttp.FormData()
    faces.add_field("image", small_jpegs(1, 1)[0], filename="a.jpg", content_type="image/jpeg")
    faces.add_field("tasks", "face")
    status, _, body = await call(http, "POST", f"{url}/v1/images", data=faces, headers=auth(NORTH))
    assert (status, body["error"]["field"]) == (403, "tasks")  # faces need their own scope


async def test_two_tenants_with_the_same_ids_never_reach_each_other(gateway: Gateway) -> None:
    settings, url, http = gateway
    north_images, south_images = (
        small_jpegs(len(SHARED_IDS) + 1, 7),
        small_jpegs(len(SHARED_IDS) + 1, 8),
    )
    north_ids, south_ids = [*SHARED_IDS, "north-only"], [*SHARED_IDS, "south-only"]
    accepted: dict[tuple[str, str], Any] = {}
    for image_id, north_jpeg in zip(north_ids, north_images, strict=True):
        accepted["north", image_id] = await upload(http, url, NORTH, image_id, north_jpeg)
    for image_id, south_jpeg in zip(south_ids, south_images, strict=True):
        accepted["south", image_id] = await upload(http, url, SOUTH, image_id, south_jpeg)
    # Neighbours, results, thumbnails and search stay within each key's tenant.
    for tenant, key, ids, jpegs in (
        ("north", NORTH, north_ids, north_images),
        ("south", SOUTH, south_ids, south_images),
    ):
        for image_id, data in zip(ids, jpegs, strict=True):
            body = accepted[tenant, image_id]
            neighbours = {n["id"] for n in body["results"][0]["neighbors"]}
            assert neighbours <= set(ids) - {image_id}, (tenant, image_id, neighbours)
            results = URL(url + body["results_url"], encoded=True)
            status, _, found = await call(http, "GET", results, headers=auth(key))
            assert status == 200
            assert {r["source_event_id"] for r in found["results"]} == {body["event_id"]}
            thumb = URL(f"{url}/demo/images/{quote(image_id, safe='')}", encoded=True)
            status, _, served = await call(http, "GET", thumb, headers=auth(key))
            assert (status, served) == (200, data), (tenant, image_id)
        search = {"text": "a photo", "top_k": 100}
        status, _, hits = await call(
            http, "POST", f"{url}/v1/search", json=search, headers=auth(key)
        )
        assert status == 200, hits
        assert sorted(h["id"] for h in hits["results"]) == sorted(ids)
    # The other tenant's own image: not found, as if it did not exist.
    for key, other in ((NORTH, "south-only"), (SOUTH, "north-only")):
        for path in (f"/v1/results/{other}", f"/demo/images/{other}"):
            assert (await call(http, "GET", url + path, headers=auth(key)))[0] == 404
    east = {"text": "a photo", "top_k": 100, "collection": "east"}  # south's second tenant
    status, _, hits = await call(http, "POST", f"{url}/v1/search", json=east, headers=auth(SOUTH))
    assert (status, hits["results"]) == (200, [])
    await _events_cannot_read_the_other_tenants_uploads(settings, url, http, accepted)


async def _events_cannot_read_the_other_tenants_uploads(
    settings: Settings, url: str, http: aiohttp.ClientSession, accepted: dict[tuple[str, str], Any]
) -> None:
    """An event in Kafka naming north's staged upload, as south or with no tenant."""
    stolen = accepted["north", "north-only"]["uri"]
    south_id, shared_id = f"steal-{uuid.uuid4().hex[:6]}", f"steal-{uuid.uuid4().hex[:6]}"
    await produce_events(
        settings,
        [event(south_id, stolen, collection="south"), event(shared_id, stolen)],
    )
    for key, image_id in ((SOUTH, south_id), (ADMIN, shared_id)):
        body: Any = {}
        for _ in range(300):
            status, _, body = await call(
                http, "GET", f"{url}/v1/results/{image_id}", headers=auth(key)
            )
            if status == 200:
                break
            await asyncio.sleep(0.1)
        (result,) = body["results"]
        assert (result["status"], result["error"]["code"]) == ("error", "bucket_not_allowed")


async def test_past_its_rate_a_key_gets_429_with_retry_after(gateway: Gateway) -> None:
    _, url, http = gateway
    statuses, retry_after = [], []
    for _ in range(5):
        status, headers, _ = await call(
            http, "GET", f"{url}/v1/results/none", headers=auth(LIMITED)
        )
        statuses.append(status)
        retry_after.append(headers.get("Retry-After"))
    assert statuses == [404, 404, 429, 429, 429]  # a burst of 2, then nothing
    assert all(value is not None and int(value) >= 1 for value in retry_after[2:])
    # Another key's budget is its own.
    assert (await call(http, "GET", f"{url}/v1/results/none", headers=auth(NORTH)))[0] == 404


async def test_cors_is_closed_unless_origins_are_configured(
    gateway: Gateway, kafka_broker: Broker, s3_server: S3Settings
) -> None:
    settings, url, http = gateway
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
    _, headers, _ = await call(http, "OPTIONS", f"{url}/v1/search", headers=preflight)
    assert "Access-Control-Allow-Origin" not in headers
    _, headers, _ = await call(
        http, "GET", f"{url}/healthz", headers={"Origin": "http://app.example"}
    )
    assert "Access-Control-Allow-Origin" not in headers
    open_auth = settings.gateway.auth.model_copy(update={"cors_origins": ["http://app.example"]})
    configured = settings.model_copy(
        update={"gateway": settings.gateway.model_copy(update={"auth": open_auth})}
    )
    async with running_gateway(configured) as other:
        status, headers, _ = await call(
            http, "OPTIONS", f"{other.url}/v1/search", headers=preflight
        )
        assert (status, headers["Access-Control-Allow-Origin"]) == (200, "http://app.example")
        evil = {"Origin": "http://evil.example"}
        status, headers, _ = await call(http, "GET", f"{other.url}/v1/results/x", headers=evil)
        assert status == 401
        assert "Access-Control-Allow-Origin" not in headers


async def test_a_gateway_without_keys_runs_only_when_told_and_only_on_loopback(
    tmp_path: Path,
) -> None:
    base = Settings(_env_file=None)
    cases = [
        GatewaySettings(auth=AuthSettings(keys_file=None)),  # no keys, not open
        GatewaySettings(host="0.0.0.0", auth=AuthSettings(open=True, keys_file=None)),
    ]
    for gateway in cases:
        with pytest.raises(ConfigError):
            async with running_gateway(base.model_copy(update={"gateway": gateway})):
                pass


def test_keys_create_prints_the_key_once_and_stores_only_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.json"
    argv = ["keys", "create", "--tenant", "north", "--scope", "ingest", "--scope", "search"]
    assert main([*argv, "--file", str(path)]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("isk_")
    stored = path.read_text()
    assert key not in stored
    assert digest(key) in stored
    assert path.stat().st_mode & 0o077 == 0  # its owner's only
    assert main(["keys", "create", "--scope", "search", "--file", str(path)]) == 2  # no tenant


def test_the_rate_limiter_refills_at_the_keys_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.wait_s("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.wait_s("a") == pytest.approx(0.5)  # one token every 0.5 s
    assert limiter.wait_s("b") == 0.0  # every key has its own bucket
    now[0] = 0.5
    assert limiter.wait_s("a") == 0.0
    assert limiter.wait_s("a", rate_per_s=0.25) == pytest.approx(4.0)  # the key's own rate
    now[0] = 100.0
    assert [limiter.wait_s("a") for _ in range(4)][-1] > 0  # refills up to the burst only
