# Where the dispatcher's time goes: py-spy's sampled stacks, summed per function.
#
# Why: a req/s ratio says how much the dispatcher's own work costs, not where. `py-spy record -f raw`
# writes one line per distinct stack, root first, leaf last, with how many samples had it:
#   <module> (dispatcher/__main__.py:4);main (dispatcher/wiring/cli.py:171);...;send (trio/_socket.py:123) 17
# From that, per function (its name and file; the line number is dropped so that all lines of a function
# count together):
# - inclusive: the samples in which it is anywhere on the stack (counted once per sample even when it
#   recurses): the time spent in it and in everything it called;
# - self: the samples in which it is the leaf: the time spent in its own code.
# py-spy leaves idle threads out by default (the event loop waiting in epoll), so the percentages are of
# the samples in which the process was busy. Functions on every busy stack (runpy, main, trio.run) are
# 100 % inclusive by definition and say nothing: they are named once and left out of the inclusive top.
#
# Owns: running py-spy against a pid and parsing its raw output. It must not import `dispatcher`.

import re
import subprocess
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness import BenchError, prepare_child

# py-spy's default: 100 samples a second.
SAMPLE_RATE = 100
# py-spy gets this long on top of its duration to attach, write its file and exit.
PY_SPY_GRACE_SECONDS = 30
TOP_FUNCTIONS = 15
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


@dataclass(frozen=True)
class FunctionTime:
    """One function's share of the samples."""

    function: str
    samples: int
    percent: float


@dataclass(frozen=True)
class StackSummary:
    """Per-function totals of a raw py-spy file."""

    samples: int
    inclusive: list[FunctionTime]
    self_time: list[FunctionTime]
    on_every_stack: list[str]  # left out of `inclusive`


def function_of(frame: str) -> str:
    """`name (file:line)` -> `name (file)`; a frame of another shape is kept as it is."""
    match = FRAME.match(frame)
    return f"{match['function']} ({match['file']})" if match else frame


def parse_stacks(lines: Iterable[str]) -> tuple[int, Counter[str], Counter[str]]:
    """Total samples, inclusive samples per function, self samples per function."""
    total, inclusive, own = 0, Counter[str](), Counter[str]()
    for line in lines:
        stack, _, count_text = line.strip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        functions = [function_of(frame) for frame in stack.split(";")]
        total += count
        for function in set(functions):
            inclusive[function] += count
        own[functions[-1]] += count
    return total, inclusive, own


def top(counts: Counter[str], total: int, limit: int = TOP_FUNCTIONS) -> list[FunctionTime]:
    """The `limit` functions with most samples, with their share of `total`."""
    return [
        FunctionTime(function, samples, 100.0 * samples / total if total else 0.0)
        for function, samples in counts.most_common(limit)
    ]


def summarise(raw: str, limit: int = TOP_FUNCTIONS) -> StackSummary:
    """The top functions by inclusive and by self time of a raw py-spy file's text."""
    total, inclusive, own = parse_stacks(raw.splitlines())
    if total == 0:
        raise BenchError("py-spy recorded no busy sample (was the process idle?)")
    everywhere = [function for function, samples in inclusive.items() if samples == total]
    for function in everywhere:
        del inclusive[function]
    return StackSummary(total, top(inclusive, total, limit), top(own, total, limit), everywhere)


def record(py_spy: str, pid: int, seconds: int, output: Path, cpus: frozenset[int] | None) -> None:
    """Sample pid for `seconds` into `output` (raw format); py-spy runs on `cpus`, away from the server."""
    argv = [py_spy, "record", "-p", str(pid), "-d", str(seconds), "-r", str(SAMPLE_RATE), "-f", "raw"]
    completed = subprocess.run(
        [*argv, "-o", str(output)],
        capture_output=True,
        text=True,
        timeout=seconds + PY_SPY_GRACE_SECONDS,
        preexec_fn=prepare_child(cpus),
        check=False,
    )
    if completed.returncode != 0 or not output.exists():
        raise BenchError(f"py-spy exited with code {completed.returncode}:\n{completed.stderr[-2000:]}")


def format_top(title: str, functions: Iterable[FunctionTime]) -> list[str]:
    """A small table: share of samples, samples, function."""
    lines = [title, f"{'share':>7}  {'samples':>7}  function"]
    lines += [f"{f.percent:6.1f} %  {f.samples:>7}  {f.function}" for f in functions]
    return lines
