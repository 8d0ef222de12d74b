"""Settings shared by every test module."""

import pytest
import trio.testing
from hypothesis import settings

# Hypothesis fails an example that takes over 200 ms by default, and reports it as flaky when the
# replay is fast. These are property tests of behaviour, not of speed: timing belongs in benchmarks/,
# and on a busy or slow machine (a fresh CI box, a benchmark running beside the suite) the deadline
# failed runs whose every assertion held.
settings.register_profile("dispatcher", deadline=None)
settings.load_profile("dispatcher")


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    """pytest-trio's virtual clock, jumping only after 5 ms of real quiet instead of at once.

    Most tests on virtual time talk to real backends over loopback, and the clock cannot see I/O
    that trio does not wait on (the health sweep reads answers from an epoll set of its own): at a
    threshold of 0 it may jump to the next check time while an answer is still on its way through a
    busy kernel. The likeliest cause of test_failed_check_is_counted_with_its_reason failing once in
    some twenty full runs (it asserts the result one grid step after the check; it did not fail in
    60 runs of its own). 5 ms of real quiet per jump adds about 8 s to the suite.
    """
    return trio.testing.MockClock(autojump_threshold=0.005)
