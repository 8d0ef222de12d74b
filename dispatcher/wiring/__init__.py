"""Wiring: the command line, the one nursery that starts every part, and the demo pool.

The top room: it may import every other one, and none imports it."""
