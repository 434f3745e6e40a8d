"""Schemas the rendered manifests of infra/k8s are held to, without a cluster.

Built-in kinds: `kubernetes-validate` at a pinned Kubernetes version, strict (unknown
fields fail, as `kubectl apply --validate=strict` does). Custom resources: the vendored
CRDs' OpenAPI schemas (infra/k8s/crds/), made strict the same way, since the API server
rejects unknown fields of a CRD under strict field validation too.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT / "infra" / "k8s" / "crds"
KUBERNETES_VERSION = "1.33.0"
KEDA = CRDS / "keda-2.20.2"
CRD_FILES = [
    KEDA / "keda.sh_scaledobjects.yaml",
    *sorted((CRDS / "strimzi-1.2.0").glob("04*-Crd-*.yaml")),
]


def _strict(schema: Any) -> Any:
    """No unknown fields where the CRD lists the fields and keeps no unknown ones."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    closed = "properties" in out and "additionalProperties" not in out
    if closed and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@cache
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    """(apiVersion, kind) -> validator, for every served version of the vendored CRDs."""
    validators = {}
    for path in CRD_FILES:
        crd = yaml.safe_load(path.read_text())
        spec = crd["spec"]
        for version in spec["versions"]:
            if version["served"]:
                schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                api_version = f"{spec['group']}/{version['name']}"
                validators[api_version, spec["names"]["kind"]] = jsonschema.Draft7Validator(schema)
    return validators


def errors(manifest: dict[str, Any]) -> list[str]:
    """Why the manifest is invalid; empty when it is valid."""
    key = (manifest["apiVersion"], manifest["kind"])
    validator = crd_validators().get(key)
    if validator is not None:
        return [
            f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(manifest)
        ]
    try:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
    return []


@cache
def kafka_scaler_keys() -> frozenset[str]:
    """The KEDA kafka scaler's trigger metadata keys (the CRD types metadata as a map)."""
    lines = (KEDA / "kafka-scaler-parameters.txt").read_text().splitlines()
    return frozenset(line for line in lines if line and not line.startswith("#"))


def unknown_keys(values: dict[str, Any], chart: dict[str, Any], at: str = "") -> list[str]:
    """Keys of Helm values the chart's defaults do not have; an empty map there (such as
    `resources: {}`) takes any keys."""
    unknown = []
    for key, value in values.items():
        if key not in chart:
            unknown.append(f"{at}{key}")
        elif isinstance(value, dict) and isinstance(chart[key], dict) and chart[key]:
            unknown += unknown_keys(value, chart[key], f"{at}{key}.")
    return unknown
