"""loadtest/peers: the summary the benchmark prints (the run itself is ``make bench-peers``)."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.peers.__main__ import _parser, summary


def test_summary_ends_with_vs_infinity(tmp_path: Path) -> None:
    report = {
        "infinity": {"batch_size": 32, "images_per_s": 10.0, "min_cosine_vs_imagestream": 1.0,
                     "rounds": [{"images_per_s": 9.0}, {"images_per_s": 11.0}]},
        "imagestream": [{"setting": "torch/fp32", "e2e_images_per_s": 12.0,
                         "bare_images_per_s": 14.0, "vs_infinity": 1.2}],
        "vs_infinity": 1.2,
    }  # fmt: skip
    lines = summary(json.loads(json.dumps(report)), tmp_path / "peers.json")
    assert lines[-1] == "vs_infinity=1.200"
    assert "imagestream torch/fp32: e2e 12.0 images/s, bare 14.0" in lines[1]
    assert "rounds 9.0 11.0" in lines[0]


def test_defaults_compare_torch_and_an_exported_engine() -> None:
    args = _parser().parse_args([])
    assert args.engines == ["torch/fp32", "onnx/fp32"]
    assert (args.batch, args.concurrency, args.per_request) == (32, 32, 1)
