"""The access log: one line per answer the front door sends, as text or JSON, written in batches.

Owns: the two line formats and `AccessLog`, the batched writer of one process.
- `text` is the combined log format's start, so that tools that read nginx's and Apache's logs read it
  (GoAccess, awk one-liners): client, `- -` (ident and user: none), the time in brackets, the request
  line in quotes, the status, the bytes sent (head and body, nginx's `$bytes_sent`); then the chosen
  backend in quotes, HAProxy's `backend/server` field, and the duration in seconds (nginx's
  `$request_time`, to the microsecond), from the request's bytes arriving to its answer's being sent:
    127.0.0.1 - - [06/Dec/2026:23:00:17 +0000] "GET /some/path?x=1 HTTP/1.1" 307 143 "web-1" 0.000213
  An answer given before a request head could be read (400, 408, 431 ...) has `"-"` for the request
  line; an answer that chose no backend (503, 400, OPTIONS *) has `"-"` for the backend.
- `json` is one object a line with the same fields: `time` (UTC, ISO 8601 with milliseconds),
  `client`, `client_port`, `method`, `target`, `version`, `status`, `bytes`, `backend`, `duration`
  (seconds); `method`, `target`, `version` and `backend` are null where the text has `-`.
Batches: lines wait in a buffer that goes out in one `os.write` when it passes `BATCH_BYTES`, when the
transport's timer calls `flush` (every `FLUSH_INTERVAL`) and at shutdown (nginx's `access_log ...
buffer=64k flush=1s`). A file is opened O_APPEND, so the processes of --workers each write their own
batches to the same file: each batch is one write of whole lines and lands whole (on stdout, a pipe,
batches stay within PIPE_BUF, which the kernel writes whole too). `reopen` (SIGUSR1, logrotate's
postrotate) writes what waits to the old file, then opens the path again.
Rules: no trio and no sockets: the transport gives the client, the answers and the duration, and runs
the timer. No request header is ever logged: the conversation hands over method, target and version
alone, so `Authorization` and cookies cannot reach the log.
"""

from __future__ import annotations

import logging
import os
import select
import time
import weakref
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring_ascii as _json_string

from dispatcher.protocol.conversation import Answered
from dispatcher.settings.config import ConfigError

log = logging.getLogger("dispatcher.access_log")

# nginx's `buffer=64k` and `flush=1s` on its buffered access_log: one write per 64 KiB of lines at
# full load (some 400 lines), and never more than a second late when traffic is light.
BATCH_BYTES = 64 * 1024
FLUSH_INTERVAL = 1.0
STDOUT = "-"
FORMATS = ("text", "json")
# The file's mode when it is created: the usual log file's (nginx's, logrotate's `create 0644`).
MODE = 0o644
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# What a target may hold unescaped: printable ASCII but for the quote and the backslash (nginx escapes
# those and every other byte as \xHH, so that a line cannot be forged or broken by a target).
_PLAIN = frozenset(range(0x21, 0x7F)) - {0x22, 0x5C}
_UNSAFE = bytes(byte for byte in range(256) if byte not in _PLAIN)  # to delete: what is left is plain
# Every access log open in this process (the front door's, the TLS door's plain 308 listener's): what
# SIGUSR1 reopens.
_OPEN: weakref.WeakSet[AccessLog] = weakref.WeakSet()
_VERSIONS = {b"1.1": "HTTP/1.1", b"1.0": "HTTP/1.0"}
_JSON_NAMES: dict[str, str] = {}
_BACKSLASH = "\\"
MAX_NAMES = 10_000


def _open(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, MODE)


def check_path(key: str, path: str | None) -> None:
    """A log path that cannot be opened for appending is refused at start, naming its key."""
    if path is None or path == STDOUT:
        return
    try:
        os.close(_open(path))
    except OSError as error:
        raise ConfigError(key, path, f"cannot open for appending: {error.strerror}") from None


def quoted(raw: bytes) -> str:
    """A target or method as the line writes it: as sent when plain, else with \\xHH escapes."""
    # h11 lets only printable ASCII through (RFC 9112's vchar, tokens): the quote and the backslash
    # are what is left to look for, two scans in C. Anything else still comes out escaped.
    if b'"' not in raw and b"\\" not in raw and raw.isascii() and len(raw.split()) == 1:
        return raw.decode("ascii")
    return "".join(chr(byte) if byte in _PLAIN else f"\\x{byte:02X}" for byte in raw)


class _Clock:
    """The line's time, formatted once a second, as the reply's Date header is."""

    def __init__(self, wall: Callable[[], float]) -> None:
        self._wall = wall
        self._second = self._next = -1.0  # the second the stamps are of, and the one after it
        self.text = self.iso = ""

    def now(self) -> float:
        moment = self._wall()
        if not self._second <= moment < self._next:
            self._second = second = int(moment)
            self._next = second + 1.0
            t = time.gmtime(second)
            self.text = (
                f"[{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
                f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000]"
            )
            self.iso = time.strftime("%Y-%m-%dT%H:%M:%S", t)
        return moment


def text_line(start: str, entry: Answered, duration: float) -> str:
    """One line of the `text` format (see the module's header); `start` is its client and time."""
    method, target, version, status, size, backend, _ = entry
    if not method:
        return f'{start}"-" {status} {size} "-" {duration:.6f}\n'
    chosen = backend if backend is not None else "-"
    request = f"{quoted(method)} {quoted(target)} {_VERSIONS.get(version) or 'HTTP/' + version.decode()}"
    return f'{start}"{request}" {status} {size} "{chosen}" {duration:.6f}\n'


def json_line(start: str, entry: Answered, duration: float) -> str:
    """One line of the `json` format (see the module's header); `start` holds its time and client."""
    method, target, version, status, size, backend, _ = entry
    if method:
        text = quoted(target)  # printable ASCII, with no quote; a backslash only in an escape
        target_json = _json_string(text) if _BACKSLASH in text else '"' + text + '"'
        request = f'"method": "{quoted(method)}", "target": {target_json}, "version": "{version.decode()}"'
    else:
        request = '"method": null, "target": null, "version": null'
    chosen = "null" if backend is None else _json_name(backend)
    return (
        f'{start}{request}, "status": {status}, "bytes": {size}, "backend": {chosen}, '
        f'"duration": {duration:.6f}}}\n'
    )


def _json_name(name: str) -> str:
    """A backend's name as a JSON string: names are few, each encoded once."""
    encoded = _JSON_NAMES.get(name)
    if encoded is None:
        if len(_JSON_NAMES) > MAX_NAMES:  # names found in DNS come and go
            _JSON_NAMES.clear()
        encoded = _JSON_NAMES[name] = _json_string(name)
    return encoded


class AccessLog:
    """One process's access log: lines formatted on `write`, kept, and written a batch at a time."""

    def __init__(self, path: str, form: str = "text", wall: Callable[[], float] = time.time) -> None:
        """Open `path` for appending (`-`: stdout); OSError when it cannot be."""
        self.path = path
        self.json = form == "json"
        self._clock = _Clock(wall)
        self._fd = 1 if path == STDOUT else _open(path)
        # A pipe writes at most PIPE_BUF bytes whole: past it, two workers' batches could interleave.
        self._batch = select.PIPE_BUF if path == STDOUT else BATCH_BYTES
        self._lines: list[str] = []
        self._size = 0
        self._failing = False  # the last write failed: said once, not at every flush
        _OPEN.add(self)

    def write(self, client: tuple[str, int], answered: Iterable[Answered], duration: float) -> None:
        """The lines of answers sent to `client` (host, port), which took `duration` seconds."""
        clock, lines, size = self._clock, self._lines, self._size
        moment = clock.now()
        if self.json:
            stamp = f"{clock.iso}.{int(moment * 1000) % 1000:03d}Z"
            start = f'{{"time": "{stamp}", "client": "{client[0]}", "client_port": {client[1]}, '
            format_line = json_line
        else:
            start, format_line = f"{client[0]} - - {clock.text} ", text_line
        for entry in answered:
            forwarded = entry[6]
            if forwarded is None:
                line = format_line(start, entry, duration)
            elif self.json:  # the client a trusted proxy forwarded, and the proxy as the peer
                line = format_line(
                    f'{{"time": "{stamp}", "client": "{forwarded}", "peer": "{client[0]}", '
                    f'"peer_port": {client[1]}, ', entry, duration,
                )  # fmt: skip
            else:
                line = format_line(f"{forwarded} - - {clock.text} ", entry, duration)
            lines.append(line)
            size += len(line)
        self._size = size
        if size >= self._batch:
            self.flush()

    def flush(self) -> None:
        """Write the lines that wait, in one write (a failure is logged once and drops them)."""
        if not self._lines:
            return
        batch = "".join(self._lines).encode("utf-8", "backslashreplace")
        self._lines, self._size = [], 0
        try:
            with memoryview(batch) as view:
                written = 0
                while written < len(view):
                    written += os.write(self._fd, view[written:])
        except OSError as error:
            if not self._failing:
                log.error("access log %s: cannot write, lines are dropped until it can: %s", self.path, error)
            self._failing = True
            return
        if self._failing:
            log.info("access log %s: written again", self.path)
            self._failing = False

    def reopen(self) -> None:
        """SIGUSR1 (logrotate's postrotate): what waits goes to the old file, then the path is opened
        again. A path that cannot be opened now keeps the old file, and says so."""
        if self.path == STDOUT:
            self.flush()
            return
        self.flush()
        try:
            fd = _open(self.path)
        except OSError as error:
            log.error(
                "access log %s: cannot reopen, still writing the old file: %s", self.path, error.strerror
            )
            return
        os.close(self._fd)
        self._fd = fd

    def close(self) -> None:
        """The last lines, then the file is closed (stdout stays open)."""
        _OPEN.discard(self)
        self.flush()
        if self._fd != 1:
            os.close(self._fd)
            self._fd = -1


def reopen_all() -> None:
    """SIGUSR1: every access log open in this process reopens its path."""
    for access_log in list(_OPEN):
        access_log.reopen()
