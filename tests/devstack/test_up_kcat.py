"""`imagestream up` as a user runs it, driven by Debian's kcat as a non-Python client."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from consumers.config.settings import S3Settings
from consumers.pipeline.s3 import S3Store
from tests.helpers import sample_jpeg

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
KCAT = shutil.which("kcat", path=str(BIN)) or shutil.which("kcat")


def _read_env(path: Path, timeout_s: float, proc: subprocess.Popen[str]) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"imagestream up exited early:\n{proc.stdout.read()}")  # type: ignore[union-attr]
        if path.is_file():
            return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)
        time.sleep(0.2)
    raise AssertionError("imagestream up did not write its stack.env in time")


@pytest.fixture
def stack_up(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:  # type: ignore[type-arg]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESTREAM_")}
    env |= {
        "IMAGESTREAM_CLIP__MODEL": "random:tiny",
        "IMAGESTREAM_CLIP__DEVICE": "cpu",
        "IMAGESTREAM_METRICS__PORT": "0",
        "IMAGESTREAM_MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("up-models")),
    }
    proc = subprocess.Popen(
        [str(BIN / "imagestream"), "up"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        stack_env = _read_env(tmp_path / ".imagestream" / "stack.env", 120, proc)
        yield proc, stack_env, tmp_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _upload(stack_env: dict[str, str], key: str, data: bytes) -> None:
    settings = S3Settings(
        endpoint_url=stack_env["IMAGESTREAM_S3__ENDPOINT_URL"],
        access_key_id=SecretStr(stack_env["IMAGESTREAM_S3__ACCESS_KEY_ID"]),
        secret_access_key=SecretStr(stack_env["IMAGESTREAM_S3__SECRET_ACCESS_KEY"]),
    )

    async def put() -> None:
        async with S3Store(settings) as s3:
            await s3.put("images", key, data, content_type="image/jpeg")

    asyncio.run(put())


@pytest.mark.skipif(KCAT is None, reason="kcat is not installed (make install installs it)")
def test_kcat_event_in_kcat_result_out_and_clean_stop(stack_up: tuple) -> None:  # type: ignore[type-arg]
    proc, stack_env, folder = stack_up
    kafka = stack_env["IMAGESTREAM_KAFKA__BOOTSTRAP_SERVERS"]
    key = f"kcat-{uuid.uuid4().hex[:6]}"
    _upload(stack_env, f"{key}.jpg", sample_jpeg("coffee"))
    line = f'{key}:{{"event_id":"{key}","image_id":"{key}","uri":"s3://images/{key}.jpg"}}\n'
    produced = subprocess.run(
        [KCAT, "-P", "-b", kafka, "-t", "images.v1", "-K:"],
        input=line,
        text=True,
        timeout=30,
        check=False,
        capture_output=True,
    )
    assert produced.returncode == 0, produced.stderr
    found: dict[str, str] = {}
    deadline = time.monotonic() + 90
    # `up` runs every enabled task: the event gets one result per task (CLIP and faces here).
    while not {"clip", "face"} <= set(found) and time.monotonic() < deadline:
        read = subprocess.run(
            [
                KCAT,
                "-C",
                "-b",
                kafka,
                "-t",
                "results.v1",
                "-o",
                "beginning",
                "-e",
                "-q",
                "-f",
                "%k %s\\n",
            ],
            text=True,
            timeout=30,
            check=False,
            capture_output=True,
        )
        rows = [row for row in read.stdout.splitlines() if row.startswith(f"{key} ")]
        found = {json.loads(row.split(" ", 1)[1])["task"]: row for row in rows}
        time.sleep(1)
    assert '"status":"ok"' in found["face"]
    assert '"faces":[]' in found["face"]
    result = found["clip"]
    assert '"status":"ok"' in result
    assert '"model":"random:tiny"' in result
    assert f'"source_event_id":"{key}"' in result

    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert "stopped" in output
    assert not (folder / ".imagestream" / "stack.env").exists()
