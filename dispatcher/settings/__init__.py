"""Settings: what the operator asked for, parsed and validated (flags, TOML), with no I/O.

The bottom room: it imports nothing from the package, and every other room may read it."""
