"""The load report protocol: how a backend tells us its load on its health-check response.

Owns: reading a load figure and a drain request out of one health response.
Rules: pure; no I/O. First match wins:
  1. header `X-Load: <number>`;
  2. a JSON object body with a numeric "load" (and optionally "state": "drain" | "ready");
  3. a body that is only a number.
Anything else (an empty body, "OK", HTML) reports nothing, which counts as load 0. A figure that is
present but not a finite number >= 0 is a bad report: the check fails with reason `bad_load`, since a
backend that lies about its load must not attract traffic by it.
Header `X-Load-State: drain` (HAProxy agent-check's word) asks to be drained; `ready` or its absence
on a later response ends it.
A load stream's event (`parse_event`) carries the same figure as its data: a number, or a JSON object
with "load" and optionally "state".
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass


class BadLoad(ValueError):
    """The backend sent a load figure that is not a finite number >= 0."""


@dataclass(slots=True)  # not frozen: one is made per check (see pool.CheckResult)
class Report:
    load: float
    drain: bool


def parse_report(headers: list[tuple[bytes, bytes]], body: bytes) -> Report:
    """The load and drain request of one health response (header names in any case)."""
    load_header = state_header = None
    for name, value in headers:
        name = name.lower()
        if name == b"x-load":
            load_header = value
        elif name == b"x-load-state":
            state_header = value
    if load_header is not None and state_header is None and not body:
        return Report(_header_number(load_header), False)  # the usual answer, on every check
    parsed = _json_object(body) if body else None
    drain = _drain(state_header, parsed)
    if load_header is not None:
        return Report(_header_number(load_header), drain)
    if parsed is not None:
        return Report(_number(parsed["load"]) if "load" in parsed else 0.0, drain)
    text = body.strip()
    if text and (_looks_numeric(text) or text.lower().lstrip(b"+-") in _NOT_FINITE):
        return Report(_number(text.decode("ascii")), drain)
    return Report(0.0, drain)


# The two forms nearly every event takes, a bare number or {"load": N}, read without json (4 us of
# the 8 an event cost): the same figure the full parse gives, and nothing it would refuse (JSON
# forbids leading zeros; 15 digits stay far from float's infinity).
_USUAL_EVENT = re.compile(
    r"\s*(?:([0-9]{1,15}(?:\.[0-9]{1,15})?)"
    r'|\{[ \t]*"load"[ \t]*:[ \t]*((?:0|[1-9][0-9]{0,14})(?:\.[0-9]{1,15})?)[ \t]*\})\s*',
    re.ASCII,
)


def parse_event(data: str) -> Report:
    """The load and drain request of one load-stream event's data."""
    usual = _USUAL_EVENT.fullmatch(data)
    if usual is not None:
        return Report(float(usual[1] or usual[2]), False)
    return parse_event_fully(data)


def parse_event_fully(data: str) -> Report:
    """`parse_event` without its shortcut: what the shortcut must agree with."""
    text = data.strip()
    parsed = _json_object(text.encode()) if text.startswith("{") else None
    if parsed is not None:
        return Report(_number(parsed["load"]) if "load" in parsed else 0.0, _drain(None, parsed))
    if not text:
        raise BadLoad("empty load event")
    return Report(_number(text), False)


# Words float() reads as numbers that are not finite: a body of only one of them is a bad load, not
# "no report" (a backend that cannot say its load must not attract traffic by it).
_NOT_FINITE = (b"nan", b"inf", b"infinity")


def _json_object(body: bytes) -> dict[str, object] | None:
    if not body.lstrip().startswith(b"{"):
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _drain(header: bytes | None, parsed: dict[str, object] | None) -> bool:
    if header is not None:
        return header.strip().lower() == b"drain"
    return parsed is not None and parsed.get("state") == "drain"


def _looks_numeric(text: bytes) -> bool:
    return all(c in b"0123456789.+-eE" for c in text)


def _header_number(value: bytes) -> float:
    """An X-Load value (float() reads ASCII bytes and ignores the white space around them)."""
    try:
        number = float(value)
    except ValueError:
        raise BadLoad(f"load {value.decode('latin-1')!r} is not a number") from None
    if not 0 <= number < math.inf:  # NaN fails both comparisons
        raise BadLoad(f"load {value.decode('latin-1').strip()!r} is not a finite number >= 0")
    return number


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        # Shown as the backend wrote it (`true`, `null`, `[1]`), not as Python's repr.
        raise BadLoad(f"load {json.dumps(value)} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise BadLoad(f"load {value!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise BadLoad(f"load {value!r} is not a finite number >= 0")
    return number
