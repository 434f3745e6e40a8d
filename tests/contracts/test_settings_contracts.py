"""The settings tree and the generated contracts."""

from __future__ import annotations

import pytest

from consumers.config.settings import Settings
from consumers.contracts import generate as contracts
from schemas.topics import Topics


def test_nested_env_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGESTREAM_KAFKA__BOOTSTRAP_SERVERS", "kafka:9093")
    monkeypatch.setenv("IMAGESTREAM_CLIP__MAX_RECORDS", "64")
    monkeypatch.setenv("IMAGESTREAM_S3__ALLOWED_BUCKETS", '["a-bucket", "b-bucket"]')
    monkeypatch.setenv("IMAGESTREAM_KAFKA__SASL_PASSWORD", "hunter2")
    settings = Settings(_env_file=None)
    assert settings.kafka.bootstrap_servers == "kafka:9093"
    assert settings.clip.max_records == 64
    assert settings.s3.allowed_buckets == ["a-bucket", "b-bucket"]
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.model_dump())


def test_env_file(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / ".env"  # type: ignore[operator]
    env.write_text("IMAGESTREAM_CLIP__MODEL=random:tiny\n")
    assert Settings(_env_file=env).clip.model == "random:tiny"


def test_tasks_are_discovered_from_the_tree() -> None:
    settings = Settings(_env_file=None)
    assert "clip" in settings.task_names()
    assert settings.task("clip") is settings.clip
    with pytest.raises(KeyError):
        settings.task("kafka")


def test_topic_prefix() -> None:
    assert Topics().images == "images.v1"
    assert Topics("acme").results == "acme.results.v1"
    assert Topics("acme").dlq == "acme.images.v1.dlq"


def test_generated_contracts_are_fresh() -> None:
    assert contracts.stale() == [], "run `imagestream schemas` and commit schemas/generated"


def test_asyncapi_documents_the_task_groups_and_results() -> None:
    doc = contracts.asyncapi_document()
    addresses = {channel["address"] for channel in doc["channels"].values()}
    assert {"images.v1", "results.v1"} <= addresses
    assert "ImageSubmitted" in doc["components"]["schemas"]
    assert "TaskResult" in doc["components"]["schemas"]
