"""A short run of benchmarks/soak.py: mixed and hostile traffic while backend processes are killed.

The soak runs as users run it, a script with its own child processes (a dispatcher and three
`python -m http.server` backends); its exit status is the verdict (0: no redirect to a dead backend
after the detection window, no connection leaked, no error, a clean exit on SIGTERM).
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


async def test_short_soak_passes() -> None:
    """8 s of soak with at least one backend killed and restarted exits 0 and reports nothing wrong."""
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, str(SOAK), "--seconds", "8"],
            check=False,
            capture_stdout=True,
            capture_stderr=True,
        )
    report = result.stdout.decode()
    print(report)
    assert result.returncode == 0, report + result.stderr.decode()[-2000:]
    assert report.splitlines()[-1] == "result: PASS"
    assert "redirects to dead backends after the detection window (1.75 s): 0" in report
    assert "connections leaked (dispatcher_open_connections at the end): 0" in report
    kills = int(report.split(" kills (SIGKILL)")[0].rsplit(" ", 1)[1])
    assert kills >= 1, report
