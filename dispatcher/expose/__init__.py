"""What an operator reads: the metrics (catalogue and rendering) and the log lines' format.

Imports: core, protocol and settings. Never net, processes or wiring: the transport hands its counters in."""
