"""Domain metrics with fixed label sets, and the /metrics, /healthz, /readyz endpoint."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from schemas.events import TaskResult

STAGES = ("fetch", "decode", "encode", "index", "search", "total")
_MS_BUCKETS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)

BATCH_SIZE = Histogram(
    "imagestream_batch_size",
    "Events per consumed micro-batch.",
    ["task"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
STAGE_MS = Histogram(
    "imagestream_stage_duration_ms",
    "Per-item time spent in each pipeline stage, milliseconds.",
    ["task", "stage"],
    buckets=_MS_BUCKETS,
)
E2E_MS = Histogram(
    "imagestream_e2e_latency_ms",
    "From the event's submitted_at to its result, milliseconds.",
    ["task"],
    buckets=_MS_BUCKETS,
)
RESULTS = Counter(
    "imagestream_results",
    "Results published, by task, status and error code.",
    ["task", "status", "code"],
)
BATCH_RETRIES = Counter(
    "imagestream_batch_retries",
    "Whole-batch retries after a transient failure.",
    ["task", "reason"],
)
MODEL_LOAD_S = Gauge("imagestream_model_load_seconds", "Model load time.", ["task", "model"])


def observe_results(task: str, results: Iterable[TaskResult], batch_size: int) -> None:
    BATCH_SIZE.labels(task).observe(batch_size)
    for result in results:
        code = result.error.code.value if result.error else ""
        RESULTS.labels(task, result.status.value, code).inc()
        for stage in STAGES:
            STAGE_MS.labels(task, stage).observe(getattr(result.timings, stage))
        if result.submitted_at is not None:
            e2e = (result.completed_at - result.submitted_at).total_seconds()
            E2E_MS.labels(task).observe(max(e2e, 0.0) * 1000)


class _Handler(BaseHTTPRequestHandler):
    registry: ClassVar[CollectorRegistry] = REGISTRY
    ready: ClassVar[Callable[[], bool]] = staticmethod(lambda: True)

    def do_GET(self) -> None:
        if self.path.startswith("/metrics"):
            self._send(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif self.path == "/healthz":
            self._send(200, b"ok\n", "text/plain")
        elif self.path == "/readyz":
            ok = type(self).ready()
            self._send(200 if ok else 503, b"ready\n" if ok else b"starting\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes every few seconds would flood the log."""


def serve_metrics(host: str, port: int, ready: Callable[[], bool]) -> ThreadingHTTPServer:
    """Serve in a daemon thread; ``port=0`` picks a free port (see ``server_address``)."""
    handler = type("Handler", (_Handler,), {"ready": staticmethod(ready)})
    server = ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
