"""The load-test tooling: synthetic images, its statistics, and one tiny run end to end."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from rich.console import Console

from consumers.cli.main import _parser
from loadtest import gpu_bench, interference, s3_bench
from loadtest.cli import _config, _setting, loadtest_command
from loadtest.config import LoadtestConfig
from loadtest.consumer import ConsumerProcess, frozen
from loadtest.run import loadtest
from loadtest.stats import Sample, batches, steady_throughput
from loadtest.synth import photo_jpeg


def test_synthetic_jpegs_are_distinct_photo_sized_640x480() -> None:
    images = [photo_jpeg(seed) for seed in range(4)]
    assert len(set(images)) == 4
    assert all(40_000 <= len(data) <= 130_000 for data in images), [len(d) for d in images]
    assert Image.open(io.BytesIO(images[0])).size == (640, 480)
    assert photo_jpeg(3) == images[3]  # reproducible per seed


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def _states_become(pids: list[int], state: str, timeout_s: float = 10.0) -> list[str]:
    """The processes' states once all are ``state``, or as they are at the deadline: a
    SIGSTOP takes effect when its target next runs, not when kill() returns."""
    deadline = time.monotonic() + timeout_s
    while (states := [_state(pid) for pid in pids]) != [state] * len(pids):
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return states


_PARENT_OF_A_SLEEPER = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


def test_frozen_stops_a_consumers_whole_process_group_then_continues_it(tmp_path: Path) -> None:
    """The bare runs between rounds must not share the CPU with the consumer or with its
    children (milvus-lite): SIGSTOP to the process group, SIGCONT after."""
    process = subprocess.Popen(
        [sys.executable, "-c", _PARENT_OF_A_SLEEPER], stdout=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        child = int(process.stdout.readline())
        consumer = ConsumerProcess({}, tmp_path / "consumer.log")
        consumer.process = process
        with frozen([consumer]):
            assert _states_become([process.pid, child], "T") == ["T", "T"]
        assert "T" not in (_state(process.pid), _state(child))  # sleeping, or still starting
    finally:
        subprocess.run(["kill", "--", f"-{process.pid}"], check=False)
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _sample(i: int, batch_start: float, service_s: float) -> Sample:
    done = batch_start + service_s
    return Sample(f"i{i}", True, "", 0.0, done, done, {"total": service_s * 1000})


def test_steady_state_leaves_out_the_first_and_the_last_batch() -> None:
    # Four batches of four, starting 1 s apart, each done 0.5 s after its start.
    samples = [_sample(4 * b + i, float(b), 0.5) for b in range(4) for i in range(4)]
    assert [len(group) for group in batches(samples)] == [4, 4, 4, 4]
    steady = steady_throughput(samples)
    assert steady is not None
    assert (steady["excluded_first_batch"], steady["excluded_last_batch"]) == (4, 4)
    assert steady["counted"] == 8
    assert steady["window_s"] == pytest.approx(2.0)
    assert steady["images_per_s"] == pytest.approx(4.0)
    # A last batch done sooner (nothing to prefetch beside it) does not raise the rate.
    early = [*samples[:12], *(_sample(12 + i, 3.0, 0.3) for i in range(4))]
    assert steady_throughput(early) == steady
    assert steady_throughput(samples[:8]) is None  # two batches: no steady state


def test_the_cli_routes_loadtest_to_its_handler() -> None:
    args = _parser().parse_args(["loadtest", "-n", "5", "--model", "random:tiny"])
    assert args.handler is loadtest_command
    assert (args.images, args.model, args.batch, args.milvus) == (5, "random:tiny", 32, "lite")
    args = _parser().parse_args(
        ["loadtest", "--consumers", "2", "--env", "IMAGESTREAM_DELIVERY__PREFETCH=off"]
    )
    assert (args.consumers, args.env) == (2, ["IMAGESTREAM_DELIVERY__PREFETCH=off"])
    with pytest.raises(SystemExit, match="IMAGESTREAM_SECTION__NAME=VALUE"):
        _setting("delivery.prefetch=false")
    with pytest.raises(SystemExit, match="need a Milvus server"):
        _config(_parser().parse_args(["loadtest", "--consumers", "2", "--milvus", "lite"]))


def test_the_gpu_bench_dry_run_writes_one_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gpu.json"
    # --no-e2e: the embedded-stack step is imagestream loadtest, tested on its own.
    assert gpu_bench.main(["--dry-run", "--no-e2e", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["environment"]["dry_run"] is True
    assert [m["model"] for m in result["models"]] == ["tiny"]
    assert result["models"][0]["encode images/s"] > 0
    assert "e2e" not in result
    assert f"wrote {out}" in capsys.readouterr().out
    defaults = gpu_bench._parser().parse_args([])
    assert (defaults.batch, defaults.dtype, defaults.budget_s, defaults.e2e) == (
        256,
        "fp16",
        480,
        True,
    )


def test_the_gpu_bench_script_runs_on_the_cpu_with_a_tiny_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--models", "tiny", "--batch", "4", "--batches", "1", "--distinct", "4", "--no-e2e"]
    argv += ["--device", "cpu", "--dtype", "fp32", "--threads", "2", "--out", str(tmp_path / "g")]
    assert gpu_bench.main(argv) == 0
    environment, figures = map(json.loads, capsys.readouterr().out.splitlines()[:2])
    assert environment["device"] == "cpu"
    assert figures["model"] == "tiny"
    assert figures["encode images/s"] > 0
    assert figures["cpu_decode+encode images/s"] > 0  # Pillow path; nvJPEG needs CUDA


def test_the_interference_bench_compares_one_call_and_split_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMAGESTREAM_MODEL_CACHE_DIR", str(tmp_path))
    argv = ["--model", "random:tiny", "--batch", "4", "--batches", "1", "--rounds", "1"]
    interference.main([*argv, "--load", "0.2"])
    lines = capsys.readouterr().out.splitlines()
    split = torch.get_num_threads()  # the split's default: one worker per torch thread
    assert [line.split(":")[0] for line in lines] == ["cpu_workers=1", f"cpu_workers={split}"]
    for line in lines:
        alone, loaded = (float(x) for x in re.findall(r"([0-9.]+) img/s", line))
        assert alone > 0
        assert loaded > 0
        assert "(floor " in line
    with pytest.raises(SystemExit):
        interference.main([*argv, "--load", "0"])


def test_the_s3_bench_measures_both_clients_against_both_server_modes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    s3_bench.main(["--rounds", "1", "--concurrency", "2"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["server"], line["client"]) for line in lines] == [
        (server, client)
        for server in s3_bench.SERVERS
        for client in ("botocore get_object", "S3Store.get (presigned, aiohttp)")
    ]
    for line in lines:
        assert line["client_cpu_ms_per_get"] > 0
        assert line["server_cpu_ms_per_get"] >= 0  # 2 GETs can fall under one clock tick
        assert line["wall_ms_per_get"] > 0


@pytest.mark.integration
async def test_a_tiny_load_test_measures_every_figure(tmp_path: Path) -> None:
    config = LoadtestConfig(
        images=24, rounds=2, model="random:tiny", batch=8, device="cpu", latency_seconds=2.0,
        bare_batches=2, legacy_iterations=2, legacy_sleep_iterations=1, legacy_sleep_s=0.2,
        out=tmp_path / "out", timeout_s=120.0, model_cache_dir=tmp_path / "models",
    )  # fmt: skip
    report = await loadtest(config, Console(file=io.StringIO()))

    phases = report["phases"]
    saturation, latency = phases["saturation"], phases["latency"]
    assert saturation["rounds"] == ["saturation-1", "saturation-2"]
    assert (saturation["results"], saturation["missing"], saturation["errors"]) == (48, 0, {})
    steady, rounds = saturation["steady_state"], [phases[name] for name in saturation["rounds"]]
    assert (
        steady["counted"] == 48 - steady["excluded_first_batch"] - steady["excluded_last_batch"] > 0
    )
    # Pooled over the rounds' own windows, not over the bare run between them.
    windows = [r["steady_state"]["window_s"] for r in rounds]
    assert steady["window_s"] == pytest.approx(sum(windows))
    assert steady["images_per_s"] == pytest.approx(
        sum(r["steady_state"]["counted"] for r in rounds) / sum(windows)
    )
    assert saturation["stages_ms"]["encode"]["p50"] > 0
    assert saturation["stages_ms"]["fetch"]["p50"] > 0
    assert saturation["batch_size"]["max"] <= 8
    assert latency["rate"] == pytest.approx(steady["images_per_s"] / 2)
    assert latency["missing"] == 0
    assert latency["e2e_ms"]["p99"] > 0

    verdicts, bare = report["verdicts"], report["bare"]
    assert (bare["model"], bare["batch"]) == ("random:tiny", 8)
    # Bare runs before, between and after the rounds; each round against the two beside it.
    runs = [run["images_per_s"] for run in bare["runs"]]
    assert len(runs) == 3
    local = [
        r["steady_state"]["images_per_s"] / ((before + after) / 2)
        for r, before, after in zip(rounds, runs, runs[1:], strict=False)
    ]
    assert [r["efficiency"] for r in verdicts["rounds"]] == pytest.approx(local)
    assert verdicts["efficiency"] == pytest.approx(sum(local) / 2)
    assert bare["images_per_s"] == pytest.approx(sum(runs) / 3)
    assert verdicts["efficiency_pooled"] == pytest.approx(
        steady["images_per_s"] / bare["images_per_s"]
    )
    assert bare["drift"] == pytest.approx(runs[-1] / runs[0] - 1)
    assert bare["spread"] == pytest.approx(max(runs) / min(runs) - 1)
    assert "batch_ms" not in bare  # per run only: percentiles of several runs do not average
    spans = [(run["started"], run["finished"]) for run in bare["runs"]]
    assert all(a < b <= c for (a, b), (c, _) in pairwise(spans))
    assert bare["cpu_workers"] == bare["runs"][0]["cpu_workers"] >= 1
    assert verdicts["latency"]["limit_ms"] == pytest.approx(3 * bare["service_ms"])

    legacy = report["legacy"]
    assert legacy["callbacks"] == 1 + 2 + 1  # warm-up, no sleep, with sleep: every job answered
    with_sleep = legacy["with_sleep"]
    assert with_sleep["images_per_s"] < legacy["no_sleep"]["images_per_s"]
    assert with_sleep["images_per_s"] == pytest.approx(with_sleep["formula_images_per_s"], rel=0.1)

    _check_files(report["files"], verdicts, rows=48 + latency["results"])
    assert report["results_per_consumer"] == [8 + 48 + latency["results"]]  # warm-up too
    cores = report["cpu_cores"]["saturation"]["cores"]
    # The pools' threads are named, so the CPU per role can be told apart (a tiny model's
    # share can round to 0 clock ticks, so only the names are checked).
    assert {"consumer thread device", "consumer thread decode"} <= cores.keys()
    assert {"broker", "s3_server"} <= cores.keys()
    assert "milvus_server" not in cores  # milvus-lite counts as the consumer's CPU


@pytest.mark.integration
async def test_two_consumer_processes_share_the_topic_through_a_milvus_server(
    tmp_path: Path,
) -> None:
    config = LoadtestConfig(
        images=64, rounds=1, model="random:tiny", batch=8, device="cpu", latency_seconds=0,
        bare_batches=1, legacy_iterations=0, milvus="server", consumers=2,
        out=tmp_path / "out", timeout_s=120.0, model_cache_dir=tmp_path / "models",
    )  # fmt: skip
    report = await loadtest(config, Console(file=io.StringIO()))

    saturation = report["phases"]["saturation"]
    assert (saturation["results"], saturation["missing"], saturation["errors"]) == (64, 0, {})
    shares = report["results_per_consumer"]
    assert sum(shares) == 2 * 8 + 64  # a warm-up batch each + saturation, each result once
    assert min(shares) > 0, shares  # both members of the group got partitions and worked
    cores = report["cpu_cores"]["saturation"]["cores"]
    assert cores["milvus_server"] > 0  # the server's CPU is counted beside the consumers'


def _check_files(files: dict[str, Any], verdicts: dict[str, Any], rows: int) -> None:
    saved = json.loads(Path(files["report"]).read_text())
    assert saved["verdicts"] == json.loads(json.dumps(verdicts))
    assert len(Path(files["samples"]).read_text().splitlines()) == 1 + rows
    for plot in map(Path, files["plots"]):
        data = plot.read_bytes()
        assert data.startswith(b"\x89PNG")
        assert len(data) < 200_000
