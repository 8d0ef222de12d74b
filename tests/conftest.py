"""Settings shared by every test module."""

from hypothesis import settings

# Hypothesis fails an example that takes over 200 ms by default, and reports it as flaky when the
# replay is fast. These are property tests of behaviour, not of speed: timing belongs in benchmarks/,
# and on a busy or slow machine (a fresh CI box, a benchmark running beside the suite) the deadline
# failed runs whose every assertion held.
settings.register_profile("dispatcher", deadline=None)
settings.load_profile("dispatcher")
