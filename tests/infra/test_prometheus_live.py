"""A real Prometheus (Debian's package) scrapes the embedded stack during a small ingest.

It loads the shipped alert rules too, so this also shows that every rule and every
dashboard query evaluates against the series the code really exports.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from consumers.client.ingest import result_reader, wait_for_results
from consumers.config.settings import ClipSettings, MetricsSettings, S3Settings, Settings
from consumers.devstack.launcher import running_consumers
from consumers.devstack.servers import HOST, Broker, Server, free_port
from consumers.ops.metrics import metrics_server
from consumers.worker.service import ConsumerService
from schemas.topics import Topics
from tests.helpers import event, produce_events, sample_jpeg, upload
from tests.infra.test_infra_metric_names import DASHBOARD, _dashboard_exprs
from tests.stack_settings import stack_settings

pytestmark = pytest.mark.integration
INFRA = Path(__file__).resolve().parents[2] / "infra" / "prometheus"


class Prometheus(Server):
    """Debian's prometheus on a free loopback port, scraping every second."""

    name = "prometheus"

    def __init__(self, runtime_dir: Path, target: str) -> None:
        super().__init__(runtime_dir)
        self.config = runtime_dir / "prometheus.yml"
        runtime_dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            json.dumps(  # JSON is YAML: no templating of a YAML file by hand
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(INFRA / "alerts.yml")],
                    "scrape_configs": [
                        {
                            "job_name": "imagestream",
                            "static_configs": [
                                {"targets": [target], "labels": {"service": "clip"}}
                            ],
                        }
                    ],
                }
            )
        )

    def _command(self) -> list[str]:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is missing: `make install` installs Debian's package")
        return [
            binary, f"--config.file={self.config}", f"--web.listen-address={HOST}:{self.port}",
            f"--storage.tsdb.path={self.runtime_dir / 'data'}", "--log.level=warn",
        ]  # fmt: skip

    def _get(self, path: str) -> Any:
        url = f"http://{HOST}:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read()) if path.startswith("/api/") else None
        except urllib.error.HTTPError as exc:  # /-/ready says 503 while starting
            exc.close()
            raise OSError(f"{path}: HTTP {exc.code}") from None

    async def _ready(self) -> None:
        await asyncio.to_thread(self._get, "/-/ready")

    async def query(self, promql: str) -> list[dict[str, Any]]:
        path = "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        answer = await asyncio.to_thread(self._get, path)
        assert answer["status"] == "success", (promql, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    async def value(self, promql: str) -> float:
        found = await self.query(promql)
        return float(found[0]["value"][1]) if found else math.nan

    async def wait_for(self, promql: str, minimum: float, timeout_s: float = 60) -> float:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (value := await self.value(promql)) < minimum or math.isnan(value):
            assert asyncio.get_running_loop().time() < deadline, f"{promql} = {value}"
            await asyncio.sleep(0.5)
        return value


@pytest.fixture
async def settings(
    kafka_broker: Broker, s3_server: S3Settings, tmp_path: Path, model_cache: Path
) -> Settings:
    return await stack_settings(
        kafka_broker.bootstrap_servers,
        s3_server,
        tmp_path,
        model_cache,
        tag="p",
        metrics=MetricsSettings(host=HOST, port=free_port(), poll_interval_s=0.5),
        clip=ClipSettings(model="random:tiny", device="cpu", max_records=8),
    )


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture
async def prometheus(settings: Settings, tmp_path: Path) -> AsyncIterator[Prometheus]:
    server = Prometheus(tmp_path / "prometheus", f"{HOST}:{settings.metrics.port}")
    async with server:
        yield server


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


async def test_readyz_waits_for_models_and_broker(settings: Settings) -> None:
    service = ConsumerService(settings, ["clip"])
    port = settings.metrics.port
    with metrics_server(HOST, port, lambda: service.ready):
        assert await asyncio.to_thread(_status, port, "/readyz") == 503
        try:
            await service.start()
            assert await asyncio.to_thread(_status, port, "/readyz") == 200
        finally:
            await service.stop()
        assert await asyncio.to_thread(_status, port, "/readyz") == 503
        assert await asyncio.to_thread(_status, port, "/healthz") == 200


async def _ingest(settings: Settings, names: list[str], bad: int = 0) -> None:
    run = uuid.uuid4().hex[:6]
    bucket = settings.s3.bucket
    await upload(settings, {f"{run}/{name}.jpg": sample_jpeg(name) for name in names})
    events = [event(f"{run}-{n}", f"s3://{bucket}/{run}/{n}.jpg") for n in names]
    events += [event(f"{run}-gone-{i}", f"s3://{bucket}/{run}/gone-{i}.jpg") for i in range(bad)]
    # Waits for these events' results only: the embedded broker's ListOffsets may place
    # the reader before the end, so an earlier round's results can come by again.
    expected = {e.event_id: {"clip"} for e in events}
    async with result_reader(settings) as reader:
        await produce_events(settings, events)
        got = await wait_for_results(reader, expected, 90, lambda _: None)
    assert len(got) == len(events)


OK = 'sum(imagestream_results_total{task="clip", status="ok"})'
MISSING = 'sum(imagestream_results_total{task="clip", code="object_not_found"})'
P99 = "histogram_quantile(0.99, sum by (le) (rate(imagestream_e2e_latency_ms_bucket[30s])))"


def _counted(status: str, code: str = "") -> float:
    """This process's count so far: other tests in the session count results too."""
    labels = {"task": "clip", "status": status, "code": code}
    return REGISTRY.get_sample_value("imagestream_results_total", labels) or 0.0


def _dashboard_queries() -> list[str]:
    return [
        e.replace("$__rate_interval", "30s").replace("$task", ".*")
        for e in _dashboard_exprs(json.loads(DASHBOARD.read_text()))
        if not e.startswith("label_values")
    ]


async def test_prometheus_scrapes_results_latency_and_lag(
    settings: Settings, prometheus: Prometheus
) -> None:
    ok_before, missing_before = _counted("ok"), _counted("error", "object_not_found")
    topics = Topics(settings.kafka.topic_prefix)
    images, group = topics.images, topics.group("imagestream-clip")
    async with running_consumers(settings, ["clip"]):
        await _ingest(settings, ["astronaut", "coffee"], bad=1)
        await prometheus.wait_for(OK, ok_before + 2)
        # A second round after Prometheus has seen the first gives rate() an increase.
        await _ingest(settings, ["camera", "chelsea"])
        ok = await prometheus.wait_for(OK, ok_before + 4)
        missing = await prometheus.wait_for(MISSING, missing_before + 1)
        p99 = await prometheus.value(P99)
        lag = await prometheus.query(
            f'imagestream_consumer_lag{{group="{group}", topic="{images}"}}'
        )
        received = await prometheus.value("sum(faststream_received_messages_total)")
        up = await prometheus.value('up{job="imagestream"}')
        rules = await asyncio.to_thread(prometheus._get, "/api/v1/rules")
        for expr in _dashboard_queries():
            await prometheus.query(expr)  # each one parses and evaluates

    assert (ok, missing) == (ok_before + 4, missing_before + 1)
    assert 0 < p99 < 300_000
    assert {row["metric"]["partition"] for row in lag} == {"0", "1"}
    assert received >= 5
    assert up == 1
    evaluated = [r for g in rules["data"]["groups"] for r in g["rules"]]
    assert len(evaluated) == 7
    assert all(r["health"] == "ok" for r in evaluated), evaluated
