"""The soak mode's memory sampling and its growth figure (no stack: /proc and arithmetic)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from consumers.cli.main import _parser
from loadtest.cli import _config
from loadtest.generator import Phase, _events
from loadtest.soak import RssSample, family_rss, growth, rss_bytes


def _series(rss_by_results: list[tuple[int, int]]) -> list[RssSample]:
    return [RssSample(float(n), done, {"c": rss}) for n, (done, rss) in enumerate(rss_by_results)]


def test_growth_compares_the_first_and_last_quarter_after_the_warm_up() -> None:
    mib = 2**20
    # 1000 results; warm-up = the first 100 (its 50 MiB spike is not counted), then
    # quarters of 225: the first averages 100 MiB, the last 104 MiB.
    samples = _series(
        [(0, 10 * mib), (50, 150 * mib), (100, 99 * mib), (200, 101 * mib), (325, 102 * mib),
         (600, 103 * mib), (775, 103 * mib), (900, 105 * mib), (1000, 104 * mib)]
    )  # fmt: skip
    (figure,) = growth(samples, total=1000).values()
    assert figure["first_quarter_mib"] == pytest.approx(100)
    assert figure["last_quarter_mib"] == pytest.approx(104)
    assert figure["growth"] == pytest.approx(0.04)
    assert figure["max_mib"] == pytest.approx(150)
    assert figure["samples"] == [2, 3]


def test_a_series_missing_from_a_quarter_gets_no_figure() -> None:
    assert growth(_series([(0, 1), (1000, 2)]), total=1000) == {}


def test_rss_is_read_for_a_process_and_with_its_children() -> None:
    own = rss_bytes(os.getpid())
    assert own is not None
    assert own > 10 * 2**20  # an interpreter with pytest loaded
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        family = family_rss(os.getpid())
        assert family["+children"] > family[""] > 0  # the child's interpreter counts
    finally:
        child.kill()
        child.wait()
    assert rss_bytes(child.pid) is None  # gone


def test_loadtest_soak_takes_a_number_of_events() -> None:
    args = _parser().parse_args(["loadtest", "--soak", "20000", "--model", "random:tiny"])
    assert _config(args).soak == 20000
    with pytest.raises(SystemExit, match="--soak"):
        _config(_parser().parse_args(["loadtest", "--soak", "-1"]))


def test_the_soak_submits_the_same_images_again_under_their_own_ids() -> None:
    uris = [f"s3://images/loadtest/{n:06d}.jpg" for n in range(3)]
    events = _events(Phase("soak", 7), uris, "run", "clip", same_images=True)
    assert [e.image_id for e in events] == [f"run-{n % 3:06d}" for n in range(7)]
    assert [e.uri for e in events] == [uris[n % 3] for n in range(7)]
    assert len({e.event_id for e in events}) == 7  # each one a new event
    fresh = _events(Phase("round", 4), uris, "run", "clip")
    assert len({e.image_id for e in fresh}) == 4
