"""Wire formats without I/O: a backend's health answer, the load stream's events, a whole small
HTTP message. Bytes in, events out.

Imports: core and settings only."""
