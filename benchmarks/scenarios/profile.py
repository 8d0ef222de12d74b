# Scenario 7, profile (only with --profile): py-spy on scenario 1's dispatcher under scenario 1's load, in a
# run of its own, so that the sampling does not slow the run whose req/s goes into scenario 1's ratio.
#
# Owns: wrk running in the background while py-spy records, and the profile's tables (pyspy.py sums them).

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyspy
from harness import (
    BenchError,
    WrkFigures,
    WrkLoad,
    busy_warning,
    check_wrk_report,
    cpu_snapshot,
    others_cpu_percent,
    prepare_child,
    wrk_argv,
)

from scenarios.context import Bench
from scenarios.results import Report
from scenarios.servers import backend_flags, dispatcher_running


@dataclass(frozen=True)
class ProfileResult(Report):
    """Scenario 7: where the dispatcher spends its time under scenario 1's load."""

    seconds: int
    wrk: WrkFigures  # the load while sampled (py-spy pauses the process for each sample: slower)
    summary: pyspy.StackSummary
    others_cpu_percent: float | None

    def title(self) -> str:
        return "7. profile: see below the table"

    def warnings(self) -> list[str]:
        warning = busy_warning(self.others_cpu_percent, "7, the profile")
        return [warning] if warning else []

    def details(self) -> list[str]:
        rps = self.wrk.requests_per_second
        lines = [
            f"7. profile: py-spy record -d {self.seconds} -r {pyspy.SAMPLE_RATE} -f raw on the dispatcher of "
            f"scenario 1 under the same load ({rps:.0f} req/s while sampled; "
            f"{self.summary.samples} busy samples)",
            "",
        ]
        everywhere = ", ".join(self.summary.on_every_stack)
        title = f"top {pyspy.TOP_FUNCTIONS} by inclusive time (left out, on every stack: {everywhere})"
        lines += pyspy.format_top(title, self.summary.inclusive)
        lines += ["", *pyspy.format_top(f"top {pyspy.TOP_FUNCTIONS} by self time", self.summary.self_time)]
        return lines


def profile(bench: Bench) -> ProfileResult:
    """7. Scenario 1's dispatcher and load, with py-spy attached for profile_seconds in the middle of it.

    A run of its own, so that the sampling (py-spy pauses the process for each sample) does not slow the
    run whose req/s goes into scenario 1's ratio."""
    settings = bench.settings
    if settings.py_spy is None:
        raise BenchError("py-spy not found: put it on PATH or give --py-spy PATH")
    # wrk starts first and ends after py-spy: 1 s of load before sampling, 1 s after.
    load = WrkLoad(settings.threads, settings.connections, settings.profile_seconds + 2, settings.wrk_cpus)
    base_urls = bench.file_backends()
    flags = backend_flags(base_urls)
    with dispatcher_running(
        bench, "dispatcher-profile", flags, base_urls, settings.server_cpus
    ) as dispatcher:
        raw = settings.log_dir / "profile.raw"
        before = cpu_snapshot([dispatcher.process.pid], bench.helper_pids())
        with wrk_in_background(load, dispatcher.port) as wrk:
            time.sleep(1.0)
            pyspy.record(
                settings.py_spy, dispatcher.process.pid, settings.profile_seconds, raw, settings.wrk_cpus
            )
            stdout, stderr = wrk.communicate(timeout=load.duration_seconds + 30)
        others = others_cpu_percent(before, cpu_snapshot([dispatcher.process.pid], bench.helper_pids()))
        figures = check_wrk_report(wrk.returncode, stdout, stderr)
    summary = pyspy.summarise(raw.read_text())
    return ProfileResult(settings.profile_seconds, figures, summary, others)


@contextmanager
def wrk_in_background(load: WrkLoad, port: int) -> Iterator[subprocess.Popen[str]]:
    """wrk running while the caller does something else; killed on the way out if still running."""
    process = subprocess.Popen(
        wrk_argv(load, port),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=prepare_child(load.cpus),
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
