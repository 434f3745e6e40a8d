"""infra/k8s rendered and held against the schemas and the code, without a cluster.

Each overlay is rendered (tests/kustomize.py), every manifest validated (built-in kinds
by kubernetes-validate, KEDA and Strimzi by their vendored CRDs), and each container's
environment, command, ports and probes checked against what the CLI serves.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from consumers.cli.main import _parser
from consumers.config.settings import Settings
from consumers.legacy.adapter import HALVES, STOP_GRACE_S
from consumers.worker.subscribe import consumer_group
from schemas.topics import Topics
from tests import k8s_schemas
from tests.infra.test_infra_compose import PREFIX, _field, dotenv, load, ours
from tests.kustomize import Manifest, build, env_file

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
SETTINGS_ENV = K8S / "base" / "settings.env"
OVERLAYS = ("dev", "strimzi-milvus")
BATCHES_PER_REPLICA = 10  # lagThreshold = max_records x this: the backlog one replica takes
WORKLOADS = ("Deployment", "Job")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Manifest]]:
    return {name: build(K8S / "overlays" / name) for name in OVERLAYS}


def kinds(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def pod(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container_env(manifests: list[Manifest], container: dict[str, Any]) -> dict[str, str]:
    """What the container's process sees: envFrom (ConfigMap, Secret), then env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= kinds(manifests, "ConfigMap")[source["configMapRef"]["name"]]["data"]
        else:
            secret = kinds(manifests, "Secret")[source["secretRef"]["name"]]["data"]
            env |= {k: base64.b64decode(v).decode() for k, v in secret.items()}
    return env | {e["name"]: e["value"] for e in container.get("env", [])}


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in [k for k in os.environ if k.startswith(PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings(_env_file=None)


def is_setting(key: str) -> bool:
    return key.startswith(PREFIX) and _field(Settings, key[len(PREFIX) :].split("__"))


def is_secret(key: str) -> bool:
    section, _, name = key[len(PREFIX) :].lower().partition("__")
    field = Settings.model_fields[section]
    if name and isinstance(field.annotation, type):
        field = field.annotation.model_fields[name]
    return SecretStr in getattr(field.annotation, "__args__", (field.annotation,))


def test_compose_and_manifests_read_one_settings_list(rendered: dict[str, Any]) -> None:
    shared = env_file(SETTINGS_ENV)
    for key, value in shared.items():
        assert is_setting(key), key
        assert not is_secret(key), f"{key} belongs in the Secret"
        # Read alike by compose (which interpolates and unquotes) and kustomize (neither).
        assert not {"$", "#"} & set(value), key
        assert not value.startswith(("'", '"')), key
    for name, service in ours(load(dotenv(ROOT / ".env.example"))).items():
        assert service["env_file"] == str(SETTINGS_ENV.relative_to(ROOT)), name
        again = shared.keys() & service.get("environment", {}).keys()
        assert not again, f"compose's {name} sets {again} beside the list"
    assert kinds(build(K8S / "base"), "ConfigMap")["imagestream-settings"]["data"] == shared
    for overlay, manifests in rendered.items():
        data = kinds(manifests, "ConfigMap")["imagestream-settings"]["data"]
        inputs = env_file(K8S / "overlays" / overlay / "inputs.env")
        assert all(is_setting(k) for k in inputs), overlay
        assert data == shared | inputs, overlay


def test_every_manifest_validates(rendered: dict[str, list[Manifest]]) -> None:
    for overlay, manifests in rendered.items():
        for manifest in manifests:
            problems = k8s_schemas.errors(manifest)
            assert not problems, f"{overlay}: {manifest['kind']} {manifest['metadata']['name']}"
    so = kinds(rendered["dev"], "ScaledObject")["clip"]
    typo = {**so, "spec": {**so["spec"], "maxReplicas": 4}}
    assert k8s_schemas.errors(typo), "the vendored CRD must reject an unknown field"
    job = kinds(rendered["dev"], "Job")["imagestream-topics"]
    assert k8s_schemas.errors({**job, "spec": {**job["spec"], "backoff": 1}})


def test_secret_holds_the_credentials_and_only_them(rendered: dict[str, Any]) -> None:
    for overlay, manifests in rendered.items():
        secret = kinds(manifests, "Secret")["imagestream-secrets"]["data"]
        assert {"IMAGESTREAM_S3__ACCESS_KEY_ID", "IMAGESTREAM_S3__SECRET_ACCESS_KEY"} <= set(secret)
        assert all(is_setting(k) and is_secret(k) for k in secret), overlay
        config = kinds(manifests, "ConfigMap")["imagestream-settings"]["data"]
        assert not [k for k in config if is_secret(k)], overlay


def _served_port(args: Any, settings: Settings) -> int:
    """Where the command answers /readyz: the gateway on its own port, the rest on metrics."""
    return settings.gateway.port if args.command == "gateway" else settings.metrics.port


def _check_container(
    name: str, container: dict[str, Any], settings: Settings, grace: int
) -> tuple[Any, list[str]]:
    args = _parser().parse_args(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert ports.get("metrics", settings.metrics.port) == settings.metrics.port, name
    if args.command != "topics":
        probes = [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]
        probes += [("startupProbe", "/healthz")] if "startupProbe" in container else []
        for probe, path in probes:
            get = container[probe]["httpGet"]
            assert get["path"] == path, name
            assert ports[get["port"]] == _served_port(args, settings), f"{name} {probe}"
    requests = container["resources"]["requests"]
    assert {"cpu", "memory"} <= set(requests), name
    if args.command == "consume":
        assert grace >= settings.delivery.graceful_timeout_s + 15, name
    elif args.command == "gateway":
        assert grace >= settings.gateway.request_timeout_s + 5, name
    elif args.command == "legacy":
        assert grace >= STOP_GRACE_S + 10, name
    return args, getattr(args, "tasks", None) or []


def test_commands_probes_ports_and_settings_match_the_cli(
    rendered: dict[str, list[Manifest]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for overlay, manifests in rendered.items():
        commands, tasks = [], []
        for kind in WORKLOADS:
            for name, workload in kinds(manifests, kind).items():
                (container,) = pod(workload)["containers"]
                env = container_env(manifests, container)
                assert all(is_setting(k) for k in env if k.startswith(PREFIX)), name
                settings = settings_from(env, monkeypatch)
                assert settings.milvus.uri.startswith("http"), "replicas need a Milvus server"
                assert settings.metrics.host == "0.0.0.0", name
                grace = pod(workload).get("terminationGracePeriodSeconds", 30)
                args, served = _check_container(name, container, settings, grace)
                commands.append((args.command, getattr(args, "only", None)))
                tasks += served
                if args.command == "legacy":
                    assert settings.legacy.polling_url, f"{overlay}: {name} has no POLLING_URL"
        assert sorted(tasks) == sorted(set(tasks)), f"{overlay}: a task runs twice"
        assert set(tasks) == set(Settings(_env_file=None).task_names()), overlay
        assert {("legacy", half) for half in HALVES} <= set(commands), overlay
        assert ("gateway", None) in commands, overlay
        assert (("topics", None) in commands) == (overlay == "dev"), overlay


def consumers(manifests: list[Manifest]) -> dict[str, Manifest]:
    return {
        n: d
        for n, d in kinds(manifests, "Deployment").items()
        if pod(d)["containers"][0]["args"][0] == "consume"
    }


# Tasks with no model on a device: Tesseract runs on the CPU.
CPU_TASKS = {"ocr"}


def test_gpu_requests_on_consumers_only(rendered: dict[str, list[Manifest]]) -> None:
    for overlay, manifests in rendered.items():
        gpu_wanted = overlay != "dev"
        for name, deployment in kinds(manifests, "Deployment").items():
            (container,) = pod(deployment)["containers"]
            resources = container["resources"]
            gpu = name in consumers(manifests) and name not in CPU_TASKS and gpu_wanted
            for part in ("requests", "limits"):
                assert (resources[part].get("nvidia.com/gpu") == 1) == gpu, f"{overlay} {name}"
            assert container["image"].endswith(":cuda") == gpu, f"{overlay} {name}"


def _expected_triggers(settings: Settings, tasks: list[str]) -> dict[str, tuple[str, str, int]]:
    topics = Topics(settings.kafka.topic_prefix)
    out = {}
    for task in tasks:
        options = settings.task(task)
        out[task] = (consumer_group(task, options, settings.kafka), topics.images, options)
    if "clip" in tasks and settings.search.enabled:
        search = settings.search
        out["search"] = (consumer_group("search", search, settings.kafka), topics.queries, search)
    return {k: (g, t, o.max_records * BATCHES_PER_REPLICA) for k, (g, t, o) in out.items()}


def test_scaled_objects_follow_each_consumer_groups_lag(
    rendered: dict[str, list[Manifest]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for overlay, manifests in rendered.items():
        scaled = kinds(manifests, "ScaledObject")
        budgets = kinds(manifests, "PodDisruptionBudget")
        assert set(scaled) == set(consumers(manifests)), overlay
        for name, deployment in consumers(manifests).items():
            assert "replicas" not in deployment["spec"], f"{name}: KEDA owns the replica count"
            labels = pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert budgets[name]["spec"]["selector"]["matchLabels"].items() <= labels.items()
            (container,) = pod(deployment)["containers"]
            env = container_env(manifests, container)
            settings = settings_from(env, monkeypatch)
            spec = scaled[name]["spec"]
            assert spec["scaleTargetRef"]["name"] == name
            assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
            assert spec["maxReplicaCount"] == settings.kafka.partitions, f"{overlay} {name}"
            want = _expected_triggers(settings, container["args"][2:])
            got = {}
            for trigger in spec["triggers"]:
                meta = trigger["metadata"]
                assert trigger["type"] == "kafka"
                assert set(meta) <= k8s_schemas.kafka_scaler_keys(), f"{name}: {set(meta)}"
                assert env[meta["bootstrapServersFromEnv"]] == settings.kafka.bootstrap_servers
                assert meta["offsetResetPolicy"] == settings.kafka.auto_offset_reset
                got[trigger["name"]] = (
                    meta["consumerGroup"],
                    meta["topic"],
                    int(meta["lagThreshold"]),
                )
            assert got == want, f"{overlay} {name}"
            assert pod_labels["app.kubernetes.io/name"] == name


def test_gateway_service_reaches_the_gateway_port(rendered: dict[str, list[Manifest]]) -> None:
    for manifests in rendered.values():
        service = kinds(manifests, "Service")["gateway"]["spec"]
        deployment = kinds(manifests, "Deployment")["gateway"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["selector"].items() <= labels.items()
        (container,) = pod(deployment)["containers"]
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        env = {e["name"]: e["value"] for e in container["env"]}
        (port,) = service["ports"]
        assert str(named[port["targetPort"]]) == env["IMAGESTREAM_GATEWAY__PORT"]
        assert env["IMAGESTREAM_GATEWAY__HOST"] == "0.0.0.0"


def test_strimzi_topics_and_bootstrap(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["strimzi-milvus"]
    config = kinds(manifests, "ConfigMap")["imagestream-settings"]["data"]
    prefix = config.get("IMAGESTREAM_KAFKA__TOPIC_PREFIX", "")
    partitions = int(config["IMAGESTREAM_KAFKA__PARTITIONS"])
    (kafka,) = kinds(manifests, "Kafka").values()
    topics = kinds(manifests, "KafkaTopic").values()
    assert sorted(t["spec"]["topicName"] for t in topics) == sorted(Topics(prefix).all())
    for topic in topics:
        assert topic["spec"]["partitions"] == partitions
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert kafka["spec"]["kafka"]["config"]["auto.create.topics.enable"] is False
    plain = next(x for x in kafka["spec"]["kafka"]["listeners"] if not x["tls"])
    bootstrap = f"{kafka['metadata']['name']}-kafka-bootstrap:{plain['port']}"
    assert config["IMAGESTREAM_KAFKA__BOOTSTRAP_SERVERS"] == bootstrap
    pools = kinds(manifests, "KafkaNodePool").values()
    assert {p["metadata"]["labels"]["strimzi.io/cluster"] for p in pools} == {
        kafka["metadata"]["name"]
    }


def test_milvus_values_are_keys_of_the_chart() -> None:
    ours_ = yaml.safe_load((K8S / "overlays/strimzi-milvus/milvus-values.yaml").read_text())
    chart = yaml.safe_load((K8S / "crds/milvus-helm-5.0.19/values.yaml").read_text())
    assert k8s_schemas.unknown_keys(ours_, chart) == []
    assert ours_["cluster"]["enabled"] is True
    assert ours_["pulsarv3"]["enabled"] is False  # Woodpecker in the streaming nodes instead
    assert ours_["streaming"]["enabled"] is True
