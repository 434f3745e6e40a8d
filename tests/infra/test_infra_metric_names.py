"""Every metric the dashboard and the alerts query is one the code exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from consumers.config.settings import KafkaSettings
from consumers.worker.kafka import make_broker

INFRA = Path(__file__).resolve().parents[2] / "infra"
DASHBOARD = INFRA / "grafana" / "dashboards" / "imagestream.json"
ALERTS = INFRA / "prometheus" / "alerts.yml"
# Series Prometheus makes itself, not any process.
PROMETHEUS_OWN = {"up"}
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
    "info": ("_info",),
}
_CLAUSE = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NOISE = re.compile(r'\{[^}]*\}|\[[^\]]*\]|"(?:[^"\\]|\\.)*"|\$\{?\w+\}?')
_LABEL_VALUES = re.compile(r"label_values\(([^,()]+),[^)]*\)")  # Grafana: (metric, label)
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def exported_series() -> set[str]:
    """Series names the registry can expose, suffixes included."""
    make_broker(KafkaSettings())  # FastStream's metrics register with the first broker
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: what is left once label matchers, ranges,
    strings, Grafana variables, grouping clauses, functions, keywords and numbers go."""
    expr = _NOISE.sub(" ", _CLAUSE.sub(" ", _LABEL_VALUES.sub(r" \1 ", expr)))
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", expr):
        following = expr[match.end() :].lstrip()
        word = match.group()
        if following.startswith("(") or word.lower() in _KEYWORDS:
            continue
        if match.start() and (expr[match.start() - 1].isdigit() or expr[match.start() - 1] == "."):
            continue  # the exponent or unit of a number such as 1e3
        names.add(word)
    return names


def _dashboard_exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from _dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _dashboard_exprs(item)


def _rule_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_the_name_extractor_finds_names_and_only_names() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (task, le) (rate(my_latency_bucket{task=~"$task",'
        ' stage!="total"}[$__rate_interval]))) > 3e4 and on () up{job="x"} offset 5m'
        " unless count without (instance) (other_total)"
    )
    assert metric_names(expr) == {"my_latency_bucket", "up", "other_total"}
    assert metric_names("label_values(imagestream_results_total, task)") == {
        "imagestream_results_total"
    }


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_queried_metric_is_exported(source: str) -> None:
    if source == "dashboard":
        exprs = list(_dashboard_exprs(json.loads(DASHBOARD.read_text())))
    else:
        exprs = _rule_exprs()
    exported = exported_series() | PROMETHEUS_OWN
    used: dict[str, set[str]] = {}
    for expr in exprs:
        for name in metric_names(expr):
            used.setdefault(name, set()).add(expr)
    assert len(exprs) >= 7
    missing = {name: sorted(where)[0] for name, where in used.items() if name not in exported}
    assert not missing, f"queried but never exported: {missing}"
    assert any(name.startswith("imagestream_") for name in used)


def test_the_dashboard_covers_what_operators_watch() -> None:
    exprs = " ".join(_dashboard_exprs(json.loads(DASHBOARD.read_text())))
    for name in (
        "imagestream_results_total",
        "imagestream_e2e_latency_ms_bucket",
        "imagestream_stage_duration_ms_sum",
        "imagestream_batch_size_bucket",
        "imagestream_dlq_records_total",
        "imagestream_consumer_lag",
        "imagestream_gpu_memory_bytes",
        "faststream_received_messages_total",
    ):
        assert name in exprs, name
