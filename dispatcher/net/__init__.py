"""The I/O: the front door's listeners and connections, the health checks and load streams (the only
code that talks to backends), and the admin listener.

Imports: expose, protocol, core and settings. Never processes or wiring."""
