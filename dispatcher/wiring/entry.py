"""The console script's entry: SIGHUP and SIGUSR1 held from the process's first moment.

Owns: the signals that arrive before the dispatcher's signal watcher runs (`held`), and when they
are done (`deliver`, once the app runs and has something to reload or reopen).
Rules: nothing of the package is imported before the signals are held but its `__init__` (the
version); the rest of the command line is `cli`'s.

Why: the default action of SIGHUP and SIGUSR1 ends the process, and importing the dispatcher, reading
its config and starting its listeners take a few hundred ms before the watcher runs. A `systemctl
reload` or logrotate's SIGUSR1 just after a start killed it (measured: dead when sent 50-300 ms after
the start, alive at 500). Held, they are not lost either: the config may have changed after it was
read, so a held SIGHUP still reloads, once.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from types import FrameType

HELD_SIGNALS = (signal.SIGHUP, signal.SIGUSR1)
_held: set[int] = set()


def hold() -> dict[int, object]:
    """Hold SIGHUP and SIGUSR1 from now on, until `deliver`; returns the handlers they had."""
    return {signum: signal.signal(signum, _hold) for signum in HELD_SIGNALS}


def release(previous: Mapping[int, object]) -> None:
    """Give the signals back the handlers `hold` returned (a test's process after `cli.main`)."""
    for signum, handler in previous.items():
        if handler is not None:
            signal.signal(signum, handler)  # type: ignore[arg-type]  # what signal.signal gave back
    _held.clear()


def held(signum: int) -> None:
    """A signal the watcher took before there was anything to do with it: done at `deliver`."""
    _held.add(signum)


def deliver(actions: Mapping[int, Callable[[], None]]) -> None:
    """The app runs: do each held signal's action once, in signal number order."""
    for signum in sorted(_held):
        action = actions.get(signum)
        if action is not None:
            action()
    _held.clear()


def _hold(signum: int, _frame: FrameType | None) -> None:
    held(signum)


def main() -> int:
    """`dispatcher`: the signals held first, then the command line (whose imports take most of the
    time before the watcher runs). A Ctrl-C before the watcher takes SIGINT ends it with the shell's
    130 and no traceback."""
    hold()
    try:
        from dispatcher.wiring.cli import main as run  # after the signals are held

        return run()
    except BaseException as error:
        if interrupted(error):
            return INTERRUPTED
        raise


# The exit status of a process ended by SIGINT, as shells report it (128 + 2).
INTERRUPTED = 128 + signal.SIGINT


def interrupted(error: BaseException) -> bool:
    """A KeyboardInterrupt, alone or as all that a group of a nursery's holds."""
    if isinstance(error, BaseExceptionGroup):
        return all(interrupted(inner) for inner in error.exceptions)
    return isinstance(error, KeyboardInterrupt)
