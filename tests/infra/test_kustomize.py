"""tests/kustomize.py renders what `kubectl kustomize` renders, for infra/k8s's overlays."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.kustomize import Manifest, Unsupported, build, merge

K8S = Path(__file__).resolve().parents[2] / "infra" / "k8s"
OVERLAYS = ("dev", "strimzi-milvus")


def _by_name(docs: list[Manifest]) -> dict[tuple[str, str], Manifest]:
    return {(m["kind"], m["metadata"]["name"]): m for m in docs}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl (its kustomize)")
def test_the_renderer_agrees_with_kubectl_kustomize() -> None:
    for overlay in OVERLAYS:
        manifests = build(K8S / "overlays" / overlay)
        real = subprocess.run(
            ["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout  # fmt: skip

        assert _by_name(list(yaml.safe_load_all(real))) == _by_name(manifests), overlay


def test_the_renderer_merges_like_kustomize(tmp_path: Path) -> None:
    base = {"spec": {"containers": [{"name": "a", "image": "x", "env": [{"name": "K"}]}]}}
    patch = {"spec": {"containers": [{"name": "a", "image": None}, {"name": "b"}]}}
    assert merge(base, patch) == {
        "spec": {"containers": [{"name": "a", "env": [{"name": "K"}]}, {"name": "b"}]}
    }
    drop = {"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}
    assert merge(base, drop) == {"spec": {"containers": []}}
    assert merge({"args": ["a", "b"]}, {"args": ["c"]}) == {"args": ["c"]}
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(Unsupported, match="commonLabels"):
        build(tmp_path)
