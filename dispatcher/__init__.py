"""dispatcher: a load-balancing 307 front door over a health-checked, least-loaded backend pool.

`__version__` is read from the installed metadata when first asked for: importlib.metadata takes
about 35 ms to import, which every import of the package paid (a backend's `dispatcher.backend`
among them), and which the console script must not pay before it holds SIGHUP (`wiring.entry`)."""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    if name != "__version__":
        raise AttributeError(f"module 'dispatcher' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version  # when asked

    try:
        found = version("dispatcher")
    except PackageNotFoundError:  # running from a source tree that was not installed
        found = "0.0.0+unknown"
    globals()["__version__"] = found
    return found
