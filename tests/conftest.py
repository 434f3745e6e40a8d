"""Shared fixtures: real servers on loopback sockets, started once per test session."""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from pydantic import SecretStr

from consumers.config.settings import S3Settings
from consumers.devstack.servers import Broker

pytest_plugins = ["pytester", "tests.leaks"]

# Property tests (tests/pipeline/test_boundary_properties.py): a bounded run in `make test`, a
# long one in `make fuzz` (HYPOTHESIS_PROFILE=fuzz). No deadline: CI machines are slow
# and shared, and a slow example is not a wrong one.
settings.register_profile("ci", max_examples=100, deadline=None, print_blob=True)
settings.register_profile("fuzz", max_examples=20_000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# ---------------------------------------------------------------------------------------
# S3: a moto server on 127.0.0.1
# ---------------------------------------------------------------------------------------

S3_TEST_BUCKET = "images"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Settings]:
    """Settings that reach a moto S3 server running for the whole session.

    The ``images`` bucket exists and is the only allowed one; derive other settings with
    ``s3_server.model_copy(update={...})``. Objects live until the session ends, so tests
    use unique keys.
    """
    # In a thread of this process rather than a subprocess: port 0 means no port race,
    # no child to leak if pytest dies, and no start-up poll.
    from moto.server import ThreadedMotoServer

    # One INFO line per request: thousands in a failed integration test's captured log,
    # which then buries the failure itself in a CI log's tail.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        # moto does not check signatures, so a bare PUT creates the bucket.
        create = urllib.request.Request(f"{endpoint}/{S3_TEST_BUCKET}", method="PUT")
        with urllib.request.urlopen(create, timeout=10) as response:
            assert response.status == 200
        yield S3Settings(
            endpoint_url=endpoint,
            access_key_id=SecretStr("testing"),
            secret_access_key=SecretStr("testing"),
            bucket=S3_TEST_BUCKET,
            allowed_buckets=[S3_TEST_BUCKET],
            connect_timeout_s=2.0,
            read_timeout_s=10.0,
        )
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------
# Kafka: a Tansu broker subprocess on 127.0.0.1 (consumers/devstack/servers.py)
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Broker]:
    """A started broker for the whole session; memory storage, so tests use unique topics.

    ``kafka_broker.bootstrap_servers`` is the address. It dies with the test run even when
    that is killed. Producers must keep ``enable_idempotence=False`` against it.
    """
    broker = await Broker(tmp_path_factory.mktemp("tansu")).start()
    try:
        yield broker
    finally:
        await broker.stop()


# --- end of the Kafka block ------------------------------------------------------------


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where ``random:<preset>`` models are built once per session and loaded from."""
    return tmp_path_factory.mktemp("models")
