"""dispatcher: a load-balancing 307 front door over a health-checked, least-loaded backend pool."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dispatcher")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
