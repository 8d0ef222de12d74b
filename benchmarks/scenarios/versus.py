# Scenario 12, versus: the dispatcher of this tree against the dispatcher at another git revision
# (`--versus REV`), both over scenario 1's three backends, loaded in turns by the same wrk: what a change
# costs the hot path, side by side in one run, the figure a commit message can give next to the old one.
#
# Owns: the other revision's checkout (a detached `git worktree` in a temporary folder, removed on the way
# out), its dispatcher's start from that folder, and the req/s ratio.
# Rules: both dispatchers run as users run them, `python -m dispatcher`; started from the checkout, the
# other revision's package comes first on sys.path (before this tree's editable install). Every wait is
# bounded (harness).

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness import REPO_ROOT, BenchError

from scenarios.context import Bench
from scenarios.results import Figure, Report, Run, round_ratios, run_warnings, speed_figures
from scenarios.servers import backend_flags, compared, dispatcher_running, file_dispatcher

THIS = "this tree"
GIT_SECONDS = 60.0  # a worktree of this repository is a few hundred files


@dataclass(frozen=True)
class VersusResult(Report):
    """Scenario 12: this tree's dispatcher against the revision's, keep-alive req/s (median of rounds)."""

    runs: list[Run]
    revision: str

    def title(self) -> str:
        return f"12. versus, {self.runs[0].load}: this tree's dispatcher vs {self.revision}'s (3 backends)"

    def figures(self) -> list[Figure]:
        return speed_figures("12", self.runs, THIS, self.revision, f"at {self.revision}")

    def warnings(self) -> list[str]:
        return run_warnings(self.runs, "12")

    def notes(self) -> list[str]:
        return round_ratios("12", self.runs, THIS, self.revision)


def versus(bench: Bench) -> VersusResult:
    """12. Both dispatchers started, then loaded in turns (Bench.take_turns)."""
    revision = bench.settings.versus
    if revision is None:
        raise BenchError("versus: give the revision to compare with, --versus REV")
    base_urls = bench.file_backends()
    with checkout(revision) as tree:
        other = dispatcher_running(
            bench, revision, backend_flags(base_urls), base_urls, bench.settings.server_cpus, cwd=tree
        )
        runs = compared(bench, bench.settings.load(), [file_dispatcher(bench, THIS), other])
    return VersusResult(runs, revision)


@contextmanager
def checkout(revision: str) -> Iterator[Path]:
    """`revision` checked out, detached, in a temporary folder, for as long as the block runs."""
    with tempfile.TemporaryDirectory(prefix="dispatcher-versus-") as folder:
        tree = Path(folder) / "tree"
        _git("worktree", "add", "--detach", str(tree), revision)
        try:
            yield tree
        finally:
            _git("worktree", "remove", "--force", str(tree))


def _git(*args: str) -> None:
    completed = subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=GIT_SECONDS, check=False
    )
    if completed.returncode != 0:
        raise BenchError(f"versus: git {' '.join(args)} failed: {completed.stderr.strip()}")
