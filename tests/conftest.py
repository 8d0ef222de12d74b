"""Settings shared by every test module."""

from __future__ import annotations

from collections.abc import Generator
from types import TracebackType

import pytest
from _pytest.outcomes import Skipped
from hypothesis import settings

# Hypothesis fails an example that takes over 200 ms by default, and reports it as flaky when the
# replay is fast. These are property tests of behaviour, not of speed: timing belongs in benchmarks/,
# and on a busy or slow machine (a fresh CI box, a benchmark running beside the suite) the deadline
# failed runs whose every assertion held.
settings.register_profile("dispatcher", deadline=None)
settings.load_profile("dispatcher")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Give a skip inside a trio test its reason and place back.

    pytest-trio (0.8) runs a test in trio, which wraps a `pytest.skip("why")` in an exception group;
    it then unwraps the group with a bare `pytest.skip()`, and the summary says only "Skipped", at a
    line of pytest's own. The skip that was raised is still the new one's `__context__`.
    """
    report = yield
    if report.skipped and call.excinfo is not None and isinstance(call.excinfo.value, Skipped):
        original = _raised_skip(call.excinfo.value)
        if original is not None and original.__traceback__ is not None:
            path, line = _caller(original.__traceback__)
            report.longrepr = (path, line, f"Skipped: {original.msg}")
    return report


def _raised_skip(skip: Skipped) -> Skipped | None:
    """The skip with a reason that a reasonless skip was raised while handling, if any."""
    if skip.msg:
        return None
    context = skip.__context__
    while isinstance(context, BaseExceptionGroup) and len(context.exceptions) == 1:
        context = context.exceptions[0]
    return context if isinstance(context, Skipped) and context.msg else None


def _caller(traceback: TracebackType) -> tuple[str, int]:
    """Where the test called pytest.skip: the last frame that pytest does not hide."""
    path, line = traceback.tb_frame.f_code.co_filename, traceback.tb_lineno
    frame: TracebackType | None = traceback
    while frame is not None:
        if not frame.tb_frame.f_locals.get("__tracebackhide__", False):
            path, line = frame.tb_frame.f_code.co_filename, frame.tb_lineno
        frame = frame.tb_next
    return path, line
