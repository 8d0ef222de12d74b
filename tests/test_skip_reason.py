"""The test suite itself: a skip inside a trio test keeps its reason in pytest's summary."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent


def test_a_skip_in_a_trio_test_shows_its_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pytest.skip("why")` in a trio test, with or without a nursery: the summary says why, and where."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makeconftest("from tests.conftest import pytest_runtest_makereport\n")
    pytester.makepyfile(
        test_skips="""
        import pytest
        import trio

        async def test_plain() -> None:
            pytest.skip("promtool is not installed")

        async def test_in_a_nursery(nursery: trio.Nursery) -> None:
            pytest.skip("net.ipv4.tcp_migrate_req is not 1")
        """
    )
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] test_skips.py:5: promtool is not installed",
            "SKIPPED [[]1[]] test_skips.py:8: net.ipv4.tcp_migrate_req is not 1",
        ]
    )
