"""deploy/ against the code: the alerts and their README say what the metrics really count.

promtool checks that the rules work (tests/expose/test_prometheus.py); these check that their words match
the dispatcher they are about.
"""

from __future__ import annotations

import re
from pathlib import Path

from dispatcher.core.reply import CHECK_HEADER

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def alert_rule(name: str) -> str:
    """The text of alert `name` in deploy/prometheus/alerts.yml, up to the next rule."""
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text(encoding="utf-8")
    match = re.search(rf"^ *- alert: {name}\n(.*?)(?=^ *- alert: |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match is not None, f"no alert {name} in alerts.yml"
    return match[1]


def alert_row(name: str) -> str:
    """The row of alert `name` in deploy/README.md's table of alerts."""
    rows = [line for line in (DEPLOY / "README.md").read_text(encoding="utf-8").splitlines()]
    [row] = [line for line in rows if line.startswith(f"| {name} |")]
    return row


def test_the_redirect_loop_alert_counts_health_checks_by_their_marker() -> None:
    """DispatcherRedirectLoop and its README row say what dispatcher_redirect_loops_total counts: the
    health checks of a dispatcher (known by the x-dispatcher-check header) answered 508, not clients
    that came back redirected, which the dispatcher has no way to see."""
    description = alert_rule("DispatcherRedirectLoop").partition("description:")[2]
    marker = CHECK_HEADER.decode()
    for text in (description, alert_row("DispatcherRedirectLoop")):
        assert marker in text and "health check" in text
        assert "came back" not in text
