"""Server-Sent Events: the bytes of a `text/event-stream` body in, its events' data out.

Owns: the WHATWG EventSource parse ("HTML Living Standard", 9.2.6 Interpreting an event stream),
as much of it as a load stream needs: lines end with CRLF, LF or CR; a line that starts with `:` is a
comment (a heartbeat); `field: value` with one optional space after the colon; `data` lines are
joined with LF; an empty line dispatches the event, and an event without data is none. Events whose
`event` field names a type other than `message` or `load` are skipped (a backend may send others for
its own clients). `id` and `retry` are read and ignored: the dispatcher reconnects on its own schedule.
Bytes that are not UTF-8 read as U+FFFD, as the standard's "UTF-8 decode" makes them (a browser's
EventSource keeps such a stream): in a comment they change nothing, in data they make a bad load.
Rules: sans-IO, pure; no imports from the rest of the package. It never holds more than MAX_LINE
bytes of a line nor MAX_EVENT of an event's data: a stream that sends more is broken (`BadStream`).
"""

from __future__ import annotations

# A load report is a few dozen bytes; these bound what a broken or hostile stream can make us hold.
MAX_LINE = 16 * 1024
MAX_EVENT = 64 * 1024
_BOM = "\ufeff"
_TYPES = ("", "message", "load")


class BadStream(Exception):
    """The bytes are not an event stream we can read (always the check's `protocol` failure).
    `events`: those the same bytes completed before the bad part, which stand."""

    def __init__(self, message: str, events: list[str] | None = None) -> None:
        super().__init__(message)
        self.events = events or []


class EventReader:
    """One stream's parser state between reads."""

    __slots__ = ("_data", "_kind", "_partial", "_pending_cr", "_started", "heard")

    def __init__(self) -> None:
        self._partial = b""  # an unfinished line
        self._pending_cr = False  # the last byte was CR: an LF right after it ends no second line
        self._data: list[str] = []
        self._kind = ""
        self._started = False  # the BOM, if any, is only stripped at the very start
        self.heard = False  # any line, comments included, arrived in the last `feed`

    def feed(self, data: bytes) -> list[str]:
        """Take bytes of the body; returns the data of every event they complete, in order."""
        self.heard = False
        if not data:
            return []
        if (
            data[-2:] == b"\n\n"
            and data.startswith(b"data:")
            and data.count(b"\n") == 2
            and b"\r" not in data
            and not self._partial
            and not self._data
            and not self._kind
            and not self._pending_cr
            and self._started
            and len(data) <= MAX_LINE
        ):
            # One whole event of one data line, nothing pending before it: what a load stream sends
            # nearly always, read without splitting it into lines (the same result as `_line`).
            self.heard = True
            value = data[5:-2]
            return [(value[1:] if value[:1] == b" " else value).decode("utf-8", "replace")]
        if self._pending_cr and data[:1] == b"\n":
            data = data[1:]
        self._pending_cr = data[-1:] == b"\r"
        lines = (self._partial + data).replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._partial = lines.pop()
        events: list[str] = []
        for line in lines:
            self.heard = True
            try:
                event = self._line(line)
            except BadStream as error:
                error.events = events
                raise
            if event is not None:
                events.append(event)
        if len(self._partial) > MAX_LINE:
            raise BadStream(f"event stream line over {MAX_LINE} bytes", events)
        return events

    def _line(self, raw: bytes) -> str | None:
        line = raw.decode("utf-8", "replace")
        if not self._started:
            self._started = True
            line = line.removeprefix(_BOM)
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            if sum(map(len, self._data)) > MAX_EVENT:
                raise BadStream(f"event over {MAX_EVENT} bytes")
        elif name == "event":
            self._kind = value
        return None

    def _dispatch(self) -> str | None:
        data, kind = self._data, self._kind
        self._data, self._kind = [], ""
        if not data or kind not in _TYPES:
            return None
        return "\n".join(data)
