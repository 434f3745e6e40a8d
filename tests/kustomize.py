"""Render a kustomization the way `kubectl apply -k` does, for the subset infra/k8s uses.

It needs no kustomize binary (tests/infra/test_kustomize.py compares it with `kubectl
kustomize` where kubectl is installed: kustomize v5.5 renders the same). It renders
`resources` (files and nested kustomizations), `configMapGenerator`/`secretGenerator`
(env files and literals, create/merge/replace, hash suffixes off), strategic-merge
`patches` given by `path` (maps merge, lists of named items merge by `name`, `null`
deletes a key, `$patch: delete` drops a resource), `namespace` and `images`. Any other
field raises, so a kustomization that grows past this fails its test instead of being
half-rendered.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]
SUPPORTED = {
    "apiVersion", "kind", "resources", "namespace", "patches", "images",
    "configMapGenerator", "secretGenerator", "generatorOptions",
}  # fmt: skip
CLUSTER_KINDS = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


class Unsupported(ValueError):
    pass


def env_file(path: Path) -> dict[str, str]:
    """kustomize's env-file rules: KEY=VALUE lines, `#` comments, blank lines skipped."""
    pairs = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def _key(manifest: Manifest) -> tuple[str, str]:
    return manifest["kind"], manifest["metadata"]["name"]


def _generated(root: Path, spec: dict[str, Any], kind: str) -> Manifest:
    unknown = set(spec) - {"name", "envs", "literals", "behavior", "type"}
    if unknown:
        raise Unsupported(f"{kind} generator fields {sorted(unknown)}")
    data: dict[str, str] = {}
    for name in spec.get("envs", []):
        data.update(env_file(root / name))
    for literal in spec.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    manifest: Manifest = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
    if kind == "Secret":
        manifest["type"] = spec.get("type", "Opaque")
        data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    manifest["data"] = data
    return manifest


def _generate(root: Path, doc: dict[str, Any], out: list[Manifest]) -> None:
    generators = [("ConfigMap", s) for s in doc.get("configMapGenerator", [])]
    generators += [("Secret", s) for s in doc.get("secretGenerator", [])]
    if generators and not doc.get("generatorOptions", {}).get("disableNameSuffixHash"):
        raise Unsupported("generators need generatorOptions.disableNameSuffixHash: true")
    for kind, spec in generators:
        made = _generated(root, spec, kind)
        behavior = spec.get("behavior", "create")
        found = [m for m in out if _key(m) == _key(made)]
        if behavior == "create":
            if found:
                raise ValueError(f"{_key(made)} exists: use behavior merge or replace")
            out.append(made)
        elif not found:
            raise ValueError(f"{_key(made)}: nothing to {behavior}")
        elif behavior == "merge":
            found[0]["data"] = {**found[0].get("data", {}), **made["data"]}
        else:
            found[0]["data"] = made["data"]


def merge(base: Any, patch: Any) -> Any:
    """A strategic merge patch, for the shapes used here."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = merge(base[key], value) if key in base else value
        return merged
    named = isinstance(base, list) and isinstance(patch, list)
    named = named and all(isinstance(i, dict) and "name" in i for i in [*base, *patch])
    if not named:
        return copy.deepcopy(patch)
    items = {item["name"]: item for item in base}
    for item in patch:
        if item.get("$patch") == "delete":
            items.pop(item["name"], None)
        else:
            name = item["name"]
            items[name] = merge(items[name], item) if name in items else item
    return list(items.values())


def _patch(root: Path, doc: dict[str, Any], out: list[Manifest]) -> list[Manifest]:
    for entry in doc.get("patches", []):
        if set(entry) != {"path"}:
            raise Unsupported(f"patch fields {sorted(entry)}: only path")
        for patch in yaml.safe_load_all((root / entry["path"]).read_text()):
            targets = [i for i, m in enumerate(out) if _key(m) == _key(patch)]
            if not targets:
                raise ValueError(f"{entry['path']}: no {_key(patch)} to patch")
            if patch.get("$patch") == "delete":
                out = [m for i, m in enumerate(out) if i not in targets]
            else:
                out[targets[0]] = merge(out[targets[0]], patch)
    return out


def _images(manifest: Manifest, images: list[dict[str, str]]) -> None:
    pod = manifest.get("spec", {}).get("template", {}).get("spec", {})
    for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
        name, _, tag = container["image"].partition(":")
        for image in images:
            if image["name"] == name:
                new_tag = image.get("newTag", tag)
                container["image"] = image.get("newName", name) + (f":{new_tag}" if new_tag else "")


def build(root: Path) -> list[Manifest]:
    """The manifests `kubectl kustomize root` would print, in order."""
    doc = yaml.safe_load((root / "kustomization.yaml").read_text())
    unknown = set(doc) - SUPPORTED
    if unknown:
        raise Unsupported(f"{root}: kustomization fields {sorted(unknown)}")
    out: list[Manifest] = []
    for entry in doc.get("resources", []):
        path = root / entry
        if path.is_dir():
            out += build(path)
        else:
            out += [m for m in yaml.safe_load_all(path.read_text()) if m]
    _generate(root, doc, out)
    out = _patch(root, doc, out)
    for manifest in out:
        if "namespace" in doc and manifest["kind"] not in CLUSTER_KINDS:
            manifest["metadata"]["namespace"] = doc["namespace"]
        _images(manifest, doc.get("images", []))
    return out
