"""Several processes: the worker processes of `--workers` and the shared table through which the
master's health checks reach them.

Imports: every room below (net, expose, protocol, core, settings). Never wiring."""
