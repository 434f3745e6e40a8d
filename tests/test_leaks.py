"""tests/leaks.py: a leaked resource is named in the run's last lines, with the test
that was running and, under ``trace_allocations``, the frames that allocated it."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LEAKY_TESTS = """
import gc, socket, warnings
import pytest

class Connection:
    _client_id = "probe"

    def __del__(self):
        warnings.warn("Unclosed Connection", ResourceWarning, source=self)

def open_socket():
    return socket.socket()

@pytest.mark.trace_allocations
def test_traced():
    open_socket()  # dropped unclosed: its finalizer warns at once

def test_untraced():
    connection = Connection()
    connection.cycle = connection  # freed only by the garbage collector
    del connection
    gc.collect()
"""


def test_leaks_are_listed_last_with_the_test_object_and_allocation_site(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    pytester.makepyfile(test_leaky=LEAKY_TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "tests.leaks", "-p", "no:cacheprovider", "-p", "no:asyncio", "-p", "no:timeout"
    )  # fmt: skip
    result.assert_outcomes(failed=2)
    heading = "unraisable exceptions: leaked resources"
    start = next(n for n, line in enumerate(result.outlines) if heading in line)
    summary = result.outlines[start:]
    traced_at = (
        f"test_leaky.py:{_line('open_socket()  #')} > test_leaky.py:{_line('return socket')}"
    )
    assert any(
        line.startswith("test_leaky.py::test_traced: socket: ResourceWarning: unclosed <socket")
        and line.endswith(f"; allocated by {traced_at}")
        for line in summary
    ), summary
    assert (
        "test_leaky.py::test_untraced: Connection of client 'probe': "
        "ResourceWarning: Unclosed Connection"
    ) in summary, summary


def _line(text: str) -> int:
    """The line number of ``text`` in the test file pytester writes (stripped source)."""
    return next(n for n, line in enumerate(LEAKY_TESTS.strip().splitlines(), 1) if text in line)
