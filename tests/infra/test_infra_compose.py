"""docker-compose.yml wired right, checked without a Docker engine.

The file is interpolated the way compose does it (with `.env.example` as the .env),
parsed, and held against the code: settings, CLI, metrics port, Prometheus discovery,
Grafana provisioning, the Dockerfile.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from consumers.cli.main import _parser
from consumers.config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?+])([^}]*))?\}|\$(\w+)")
PREFIX = "IMAGESTREAM_"
METRICS_PORT = "9464"


class Missing(ValueError):
    pass


def dotenv(path: Path) -> dict[str, str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's rules: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $$."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2) or "", match.group(3) or ""
        value = env.get(name)
        unset_or_empty = not value if op.startswith(":") else value is None
        if op.endswith("-") and unset_or_empty:
            return arg
        if op.endswith("?") and unset_or_empty:
            raise Missing(f"{name}: {arg}")
        return value or ""

    return _VARIABLE.sub(one, text)


def _interpolated(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: _interpolated(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolated(item, env) for item in node]
    return node


def load(env: dict[str, str]) -> dict[str, Any]:
    """Parsed first, then interpolated value by value, as compose does."""
    document: dict[str, Any] = _interpolated(yaml.safe_load(COMPOSE.read_text()), env)
    return document


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(dotenv(ROOT / ".env.example"))


def service_env(service: dict[str, Any]) -> dict[str, str]:
    """A container's environment as compose builds it: env_file, then environment."""
    files = service.get("env_file", [])
    env: dict[str, str] = {}
    for name in [files] if isinstance(files, str) else files:
        env.update(dotenv(ROOT / name))
    return env | {k: str(v) for k, v in service.get("environment", {}).items()}


def ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run the imagestream image."""
    return {
        name: service
        for name, service in compose["services"].items()
        if str(service.get("image", "")).startswith("imagestream:")
    }


def test_required_variables_stop_compose_with_a_message() -> None:
    text = COMPOSE.read_text()
    required = {m.group(1) for m in _VARIABLE.finditer(text) if (m.group(2) or "").endswith("?")}
    assert {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "GRAFANA_ADMIN_PASSWORD"} <= required
    for name in required:
        env = {k: v for k, v in dotenv(ROOT / ".env.example").items() if k != name}
        with pytest.raises(Missing, match=rf"^{name}: set {name} in \.env"):
            load(env)


def test_env_example_documents_every_variable_compose_reads() -> None:
    text = re.sub(r"\$\$", "", COMPOSE.read_text())
    used = {m.group(1) or m.group(4) for m in _VARIABLE.finditer(text)}
    assert used - dotenv(ROOT / ".env.example").keys() == set()


def _field(model: type[BaseModel], parts: list[str]) -> bool:
    """Whether IMAGESTREAM_A__B names a field of the settings tree."""
    field = model.model_fields.get(parts[0].lower())
    if field is None:
        return False
    if len(parts) == 1:
        return True
    nested = field.annotation
    return isinstance(nested, type) and issubclass(nested, BaseModel) and _field(nested, parts[1:])


def test_every_imagestream_variable_is_a_setting_and_validates(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = ours(compose)
    assert {"kafka-init", "clip", "face", "adapter", "gateway"} <= services.keys()
    for name, service in services.items():
        env = service_env(service)
        unknown = [
            k
            for k in env
            if k.startswith(PREFIX) and not _field(Settings, k[len(PREFIX) :].split("__"))
        ]
        assert not unknown, f"{name} sets variables no setting reads: {unknown}"
        for key in [k for k in os.environ if k.startswith(PREFIX)]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings(_env_file=None)
        assert settings.kafka.bootstrap_servers == "kafka:9092"
        assert settings.kafka.enable_idempotence  # Apache Kafka takes idempotent producers
        assert settings.milvus.uri == "http://milvus:19530"  # a server: replicas share it
        assert settings.s3.allowed_buckets == [settings.s3.bucket]
        assert (settings.metrics.host, str(settings.metrics.port)) == ("0.0.0.0", METRICS_PORT)


def test_entry_commands_are_real_cli_commands(compose: dict[str, Any]) -> None:
    assert 'ENTRYPOINT ["imagestream"]' in DOCKERFILE.read_text()
    deployed: list[str] = []
    for name, service in ours(compose).items():
        command = service["command"]
        try:
            args = _parser().parse_args(command)
        except SystemExit:
            pytest.fail(f"{name}: `imagestream {' '.join(command)}` is not a command the CLI has")
        if args.command == "consume":
            assert args.tasks, f"{name} must name its tasks"
            deployed += args.tasks
    assert sorted(deployed) == sorted(set(deployed)), "a task runs in two services"
    assert set(deployed) == set(Settings(_env_file=None).task_names()), "a task has no service"


def test_health_checks_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        one_shot = service.get("restart") == "no"
        assert one_shot or "healthcheck" in service, f"{name} has no healthcheck"
        for target, rule in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on a missing {target}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits on {target}'s health"
            else:
                assert rule["condition"] == "service_completed_successfully"
                assert services[target].get("restart") == "no", f"{target} is not a one-shot job"
    for name, service in ours(compose).items():
        if service.get("restart") == "no":
            continue
        port = service["environment"].get("IMAGESTREAM_GATEWAY__PORT", METRICS_PORT)
        probe = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/readyz" in probe, name
    for name in ("clip", "face", "adapter", "gateway"):
        waits = services[name]["depends_on"]
        assert waits["kafka-init"]["condition"] == "service_completed_successfully", name


# Consumers whose task has no model on a device (Tesseract runs on the CPU).
CPU_CONSUMERS = {"ocr"}


def test_gpu_reservations_and_scalable_replicas(compose: dict[str, Any]) -> None:
    for name, service in ours(compose).items():
        consume = service["command"][0] == "consume"
        gpu = consume and name not in CPU_CONSUMERS
        deploy = service.get("deploy", {})
        devices = deploy.get("resources", {}).get("reservations", {}).get("devices", [])
        assert bool(devices) == gpu, f"{name}: GPUs are for the model consumers only"
        if gpu:
            assert service["image"] == "imagestream:cuda"
            assert devices[0]["capabilities"] == ["gpu"]
            assert devices[0]["driver"] == "nvidia"
        if consume:
            assert int(deploy["replicas"]) >= 1
            # --scale: replicas can have neither a fixed name nor a published port.
            assert "container_name" not in service
            assert "ports" not in service
        if not gpu:
            assert service["image"] == "imagestream:cpu"


def test_ports_volumes_and_mounts(compose: dict[str, Any]) -> None:
    published: list[str] = []
    for name, service in compose["services"].items():
        for mapping in service.get("ports", []):
            address, host_port, _ = str(mapping).rsplit(":", 2)
            assert address == "127.0.0.1", f"{name} publishes beyond loopback by default"
            published.append(host_port)
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts a missing {source}"
            else:
                assert source in compose["volumes"], f"{name} uses an undeclared volume"
    assert len(published) == len(set(published)), "two services publish one host port"
    assert {"9094", "9000", "8080", "9090", "3000"} <= set(published)


def test_prometheus_and_grafana_see_every_imagestream_service(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "imagestream")
    discovery = job["dns_sd_configs"][0]
    long_running = {n for n, s in ours(compose).items() if s.get("restart") != "no"}
    assert set(discovery["names"]) == long_running
    assert str(discovery["port"]) == METRICS_PORT
    grafana = compose["services"]["grafana"]
    mounts = dict(str(v).split(":")[:2] for v in grafana["volumes"] if str(v).startswith("."))
    provisioning = ROOT / mounts["./infra/grafana/provisioning"].replace(
        "/etc/grafana/provisioning", "infra/grafana/provisioning"
    )
    provider = yaml.safe_load((provisioning / "dashboards" / "imagestream.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == mounts["./infra/grafana/dashboards"]
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    dashboard = json.loads((ROOT / "infra/grafana/dashboards/imagestream.json").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p} == {uid}
    assert source["datasources"][0]["url"] == "http://prometheus:9090"


def test_images_build_from_this_repository(compose: dict[str, Any]) -> None:
    text = DOCKERFILE.read_text()
    declared = set(re.findall(r"^ARG (\w+)", text, re.MULTILINE))
    for name, service in ours(compose).items():
        build = service["build"]
        assert (ROOT / build["context"] / build["dockerfile"]) == DOCKERFILE, name
        assert set(build.get("args", {})) <= declared, name
    for source in re.findall(r"^COPY (?!--)(\S+)", text, re.MULTILINE):
        assert (ROOT / source).exists(), source
        assert f"!{source.rstrip('/')}" in (ROOT / ".dockerignore").read_text()
