"""The HTTP gateway through the real stack: uvicorn on loopback, Kafka request/reply to a
running CLIP consumer (random:tiny), uploads to the moto S3 server, results from Kafka."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest
from multidict import CIMultiDict

from consumers.config.settings import (
    WEARABLE,
    GatewaySettings,
    S3Settings,
    Settings,
    ZeroShotSettings,
)
from consumers.devstack.launcher import running_consumers
from consumers.devstack.servers import Broker
from consumers.gateway.api_keys import AuthSettings
from consumers.gateway.server import running_gateway
from tests.helpers import sample_jpeg
from tests.stack_settings import clip_only_settings

pytestmark = pytest.mark.integration
COLOURS = ["red", "green", "blue", "yellow"]
LIMITS = GatewaySettings(
    port=0,
    request_timeout_s=30,
    max_request_bytes=500_000,
    max_image_bytes=200_000,
    max_items=4,
    max_text_chars=200,
    auth=AuthSettings(open=True, keys_file=None),  # keys: tests/gateway/test_gateway_auth.py
)


@pytest.fixture(scope="module")
async def gateway(
    kafka_broker: Broker, s3_server: S3Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Settings, str]]:
    zero_shot = ZeroShotSettings(label_sets={"wearable": list(WEARABLE), "colours": COLOURS})
    settings = await clip_only_settings(
        kafka_broker.bootstrap_servers,
        s3_server,
        tmp_path_factory.mktemp("gateway"),
        gateway=LIMITS,
        zero_shot=zero_shot,
    )
    async with running_consumers(settings, ["clip"]), running_gateway(settings) as running:
        yield settings, running.url


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


def form(*parts: tuple[str, bytes | str]) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for key, value in parts:
        if isinstance(value, bytes):
            data.add_field(key, value, filename=f"{key}.jpg", content_type="image/jpeg")
        else:
            data.add_field(key, value)
    return data


async def post(
    http: aiohttp.ClientSession, url: str, data: Any, **kwargs: Any
) -> tuple[int, CIMultiDict[str], Any]:
    async with http.post(url, data=data, **kwargs) as response:
        return response.status, response.headers.copy(), await response.json()


async def test_embeddings_for_images_and_texts_keyed_by_form_key(
    gateway: tuple[Settings, str], http: aiohttp.ClientSession
) -> None:
    _, url = gateway
    astronaut = sample_jpeg("astronaut")
    data = form(
        ("image-1", astronaut),
        ("image-2", astronaut),
        ("text-1", "a man on the moon"),
        ("text-2", "a cup of coffee"),
    )
    status, headers, body = await post(
        http, f"{url}/v1/embeddings", data, headers={"request_id": "17"}
    )
    assert status == 200, body
    assert headers["request_id"] == body["request_id"] == "17"
    assert (body["model"], body["dim"]) == ("random:tiny", 32)
    vectors = {key: np.asarray(v) for key, v in body["vectors"].items()}
    assert set(vectors) == {"image-1", "image-2", "text-1", "text-2"}
    for vector in vectors.values():
        assert vector.shape == (32,)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(vectors["image-1"], vectors["image-2"], atol=1e-5)
    assert not np.allclose(vectors["text-1"], vectors["text-2"])
    assert body["truncated"] == []


async def test_a_request_without_an_id_gets_a_uuid(
    gateway: tuple[Settings, str], http: aiohttp.ClientSession
) -> None:
    _, url = gateway
    status, headers, body = await post(http, f"{url}/v1/embeddings", form(("q", "a hat")))
    assert status == 200, body
    assert str(uuid.UUID(headers["request_id"])) == headers["x-request-id"] == body["request_id"]
    assert list(body["vectors"]) == ["q"]


async def test_labels_are_the_top_three_of_the_default_set_or_a_named_one(
    gateway: tuple[Settings, str], http: aiohttp.ClientSession
) -> None:
    _, url = gateway
    image = form(("photo", sample_jpeg("chelsea")))
    status, _, body = await post(http, f"{url}/v1/labels", image)
    assert status == 200, body
    assert body["label_set"] == "wearable"
    assert len(body["labels"]) == 3
    assert body["top_categories"] == [label["label"] for label in body["labels"]]
    assert set(body["top_categories"]) <= set(WEARABLE)
    scores = [label["score"] for label in body["labels"]]
    assert scores == sorted(scores, reverse=True)
    assert 0 < sum(scores) <= 1.0001
    image = form(("photo", sample_jpeg("chelsea")))
    status, _, body = await post(http, f"{url}/v1/labels?label_set=colours&top_k=4", image)
    assert status == 200, body
    assert sorted(body["top_categories"]) == sorted(COLOURS)
    assert sum(label["score"] for label in body["labels"]) == pytest.approx(1.0, abs=1e-4)


async def test_an_uploaded_image_is_submitted_and_its_results_served(
    gateway: tuple[Settings, str], http: aiohttp.ClientSession
) -> None:
    _, url = gateway
    first = f"gw/{uuid.uuid4().hex[:6]}"  # a slash in the id: a path segment in the URL
    data = form(("image", sample_jpeg("astronaut")), ("image_id", first), ("top_k", "5"))
    status, _, accepted = await post(http, f"{url}/v1/images", data)
    assert status == 202, accepted
    assert (accepted["image_id"], accepted["tasks"]) == (first, ["clip"])
    assert accepted["uri"].startswith("s3://images/gateway/shared/images/")  # no tenant
    body: dict[str, Any] = {}
    for _ in range(200):
        async with http.get(f"{url}{accepted['results_url']}") as response:
            body = await response.json()
            if response.status == 200:
                break
        await asyncio.sleep(0.1)
    (result,) = body["results"]
    assert (result["image_id"], result["status"], result["task"]) == (first, "ok", "clip")
    assert "reply" not in result
    second = f"gw-{uuid.uuid4().hex[:6]}"
    data = form(("image", sample_jpeg("astronaut")), ("image_id", second), ("tasks", "clip"))
    status, _, waited = await post(http, f"{url}/v1/images?wait=true", data)
    assert status == 200, waited
    (result,) = waited["results"]
    assert result["source_event_id"] == waited["event_id"]
    assert result["neighbors"][0]["id"] == first
    assert result["neighbors"][0]["score"] == pytest.approx(1.0, abs=1e-4)


BAD_EMBEDDINGS = [
    ("not multipart", {"json": {"text-1": "hi"}}, 400, "invalid_request", None),
    ("not an image", {"data": form(("pic", b"<html>hello</html>"))}, 415, "not_an_image", "pic"),
    ("empty file", {"data": form(("pic", b""))}, 415, "not_an_image", "pic"),
    (
        "image over the cap",
        {"data": form(("pic", b"\xff\xd8\xff" + bytes(250_000)))},
        413,
        "image_too_large",
        "pic",
    ),
    ("text too long", {"data": form(("t", "x" * 201))}, 422, "text_too_long", "t"),
    ("blank text", {"data": form(("t", "   "))}, 400, "invalid_request", "t"),
    ("repeated key", {"data": form(("t", "a"), ("t", "b"))}, 400, "invalid_request", None),
    (
        "too many items",
        {
            "data": form(
                *[(f"i{n}", sample_jpeg("coffee")) for n in range(3)], ("a", "x"), ("b", "y")
            )
        },
        413,
        "too_many_items",
        None,
    ),
    (
        "too many fields",
        {"data": form(*[(f"t{n}", "x") for n in range(6)])},
        400,
        "invalid_request",
        None,
    ),
    (
        "body over the cap",
        {"data": form(*[(f"p{n}", b"\xff\xd8\xff" + bytes(190_000)) for n in range(4)])},
        413,
        "payload_too_large",
        None,
    ),
]


@pytest.mark.parametrize(
    ("case", "request_kwargs", "status", "code", "field"),
    BAD_EMBEDDINGS,
    ids=[case[0] for case in BAD_EMBEDDINGS],
)
async def test_bad_embedding_requests_get_typed_errors(
    gateway: tuple[Settings, str],
    http: aiohttp.ClientSession,
    case: str,
    request_kwargs: dict[str, Any],
    status: int,
    code: str,
    field: str | None,
) -> None:
    _, url = gateway
    async with http.post(
        f"{url}/v1/embeddings", headers={"X-Request-ID": case}, **request_kwargs
    ) as response:
        body = await response.json()
        assert response.status == status, body
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert body["error"].get("field") == field
    assert body["request_id"] == case


BAD_OTHERS = [
    (
        "labels: unknown set",
        "/v1/labels?label_set=hats",
        [("p", "coffee")],
        404,
        "unknown_label_set",
    ),
    ("labels: top_k too big", "/v1/labels?top_k=21", [("p", "coffee")], 400, "invalid_request"),
    ("labels: top_k zero", "/v1/labels?top_k=0", [("p", "coffee")], 400, "invalid_request"),
    (
        "labels: two images",
        "/v1/labels",
        [("p", "coffee"), ("q", "coffee")],
        400,
        "invalid_request",
    ),
    ("labels: a text", "/v1/labels", [("p", "coffee"), ("t", "text")], 400, "invalid_request"),
    ("images: no file", "/v1/images", [("image_id", "x")], 400, "invalid_request"),
    ("images: not an image", "/v1/images", [("image", b"GIF")], 415, "not_an_image"),
    (
        "images: unknown task",
        "/v1/images",
        [("image", "coffee"), ("tasks", "ocr")],
        422,
        "unknown_task",
    ),
    (
        "images: bad top_k",
        "/v1/images",
        [("image", "coffee"), ("top_k", "-1")],
        400,
        "invalid_request",
    ),
    (
        "images: id too long",
        "/v1/images",
        [("image", "coffee"), ("image_id", "x" * 600)],
        400,
        "invalid_request",
    ),
    ("no such route", "/v1/nothing", [("t", "x")], 404, "not_found"),
    ("wrong method", "/v1/results/x", [("t", "x")], 405, "method_not_allowed"),
]


@pytest.mark.parametrize(
    ("case", "path", "parts", "status", "code"), BAD_OTHERS, ids=[c[0] for c in BAD_OTHERS]
)
async def test_bad_label_and_image_requests_get_typed_errors(
    gateway: tuple[Settings, str],
    http: aiohttp.ClientSession,
    case: str,
    path: str,
    parts: list[tuple[str, str | bytes]],
    status: int,
    code: str,
) -> None:
    _, url = gateway
    photos = {"p", "q", "image"}
    resolved = [(k, sample_jpeg(v) if k in photos and isinstance(v, str) else v) for k, v in parts]
    got, _, body = await post(http, f"{url}{path}", form(*resolved))
    assert got == status, (case, body)
    assert body["error"]["code"] == code
    assert body["request_id"]


async def test_unknown_results_are_a_typed_404(
    gateway: tuple[Settings, str], http: aiohttp.ClientSession
) -> None:
    _, url = gateway
    async with http.get(f"{url}/v1/results/never-submitted") as response:
        body = await response.json()
        assert response.status == 404
    assert body["error"]["code"] == "not_found"
    assert "never-submitted" in body["error"]["message"]
    # auth.open lets a request without a key in, but a key that is sent is still checked.
    wrong = {"Authorization": "Bearer isk_not_a_key"}
    async with http.get(f"{url}/v1/results/never-submitted", headers=wrong) as response:
        assert response.status == 401


async def test_without_a_clip_consumer_the_gateway_answers_504(
    kafka_broker: Broker,
    s3_server: S3Settings,
    tmp_path_factory: pytest.TempPathFactory,
    http: aiohttp.ClientSession,
) -> None:
    lonely = await clip_only_settings(
        kafka_broker.bootstrap_servers,
        s3_server,
        tmp_path_factory.mktemp("lonely"),
        gateway=LIMITS.model_copy(update={"request_timeout_s": 1.0}),
    )
    async with running_gateway(lonely) as running:
        status, _, body = await post(http, f"{running.url}/v1/embeddings", form(("t", "hi")))
    assert status == 504
    assert body["error"]["code"] == "timeout"
    assert "no CLIP consumer answered within 1 s" in body["error"]["message"]


async def test_the_openapi_document_is_served(
    gateway: tuple[Settings, str], http: aiohttp.ClientSession
) -> None:
    _, url = gateway
    async with http.get(f"{url}/openapi.json") as response:
        assert response.status == 200
        document = await response.json()
    paths = document["paths"]
    assert {"/v1/embeddings", "/v1/labels", "/v1/images", "/v1/results/{image_id}"} <= set(paths)
    assert "413" in paths["/v1/embeddings"]["post"]["responses"]
    async with http.get(f"{url}/docs") as response:
        assert response.status == 200
