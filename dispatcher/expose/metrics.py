"""The name `Metrics` had before the catalogue and the render engine became modules of their own.

Owns nothing: catalogue.py says what is measured, render.py makes a scrape's bytes (`Metrics`).
Rules: only this re-export, for the modules that still import it from here (net/admin.py,
wiring/app.py); delete it once they import `dispatcher.expose.render`.
"""

from dispatcher.expose.render import Metrics

__all__ = ["Metrics"]
