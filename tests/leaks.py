"""Leaked resources, named again in the last lines of a test run.

Under ``filterwarnings = error`` the ResourceWarning of a finalizer (an unclosed socket,
asyncio transport, stream writer or aiokafka connection) is an "unraisable" exception,
and pytest fails whichever test is running when the garbage collector frees the object,
not necessarily the one that leaked it. pytest describes it inside that test's failure
text, far from the end of the output; a CI log's tail shows only the count. This plugin
prints one line per unraisable exception as the run ends: the test that was running, the
leaked object, and, for tests marked ``trace_allocations``, the frames of this repository
that allocated it (tracing slows Python down: moto's first request, which imports its
S3 backend, took 10 s instead of 0.1 s, so only marked tests trace).
"""

from __future__ import annotations

import sys
import tracemalloc
from collections.abc import Generator
from pathlib import Path
from types import TracebackType

import pytest

_TRACE_FRAMES = 40
_LINE_CHARS = 400

_seen: list[str] = []
_running = ["(no test)"]
_root = [Path.cwd()]  # the run's rootdir, once configured


def _leaked_object(unraisable: sys.UnraisableHookArgs) -> object:
    """The object a finalizer was cleaning up: its ``self``, else what the hook names."""
    tb: TracebackType | None = unraisable.exc_traceback
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None and "self" in tb.tb_frame.f_locals:
        return tb.tb_frame.f_locals["self"]
    return unraisable.object


def _allocated_by(obj: object) -> str:
    ours = [
        f"{Path(frame.filename).relative_to(_root[0])}:{frame.lineno}"
        for frame in tracemalloc.get_object_traceback(obj) or ()
        if Path(frame.filename).is_relative_to(_root[0]) and "site-packages" not in frame.filename
    ]
    return f"; allocated by {' > '.join(ours[-3:])}" if ours else ""


def _describe(unraisable: sys.UnraisableHookArgs) -> str:
    try:
        return _description(unraisable)
    except Exception as exc:  # never fail inside the hook: pytest's own must still run
        return f"{_running[0]}: {unraisable.exc_value!r} (not described: {exc!r})"


def _description(unraisable: sys.UnraisableHookArgs) -> str:
    obj = _leaked_object(unraisable)
    client = getattr(obj, "_client_id", None)  # which aiokafka client a connection served
    what = f"{type(obj).__name__}{f' of client {client!r}' if client else ''}"
    error = f"{unraisable.exc_type.__name__}: {unraisable.exc_value}"
    return f"{_running[0]}: {what}: {error}{_allocated_by(obj)}"[:_LINE_CHARS]


@pytest.hookimpl(trylast=True)  # after pytest's own hook is in place: this one wraps it
def pytest_configure(config: pytest.Config) -> None:
    _root[0] = config.rootpath
    config.addinivalue_line(
        "markers",
        "trace_allocations: tracemalloc runs during the test, so a leak names its allocation site",
    )
    pytests_hook = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        _seen.append(_describe(unraisable))
        pytests_hook(unraisable)

    sys.unraisablehook = hook


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    _running[0] = item.nodeid
    tracing = item.get_closest_marker("trace_allocations") and not tracemalloc.is_tracing()
    if tracing:
        tracemalloc.start(_TRACE_FRAMES)
    try:
        return (yield)
    finally:
        if tracing:
            tracemalloc.stop()
        _running[0] = f"(after {item.nodeid})"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _seen:
        terminalreporter.section("unraisable exceptions: leaked resources", sep="=")
        for line in _seen:
            terminalreporter.line(line)
