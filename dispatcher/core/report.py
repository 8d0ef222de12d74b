"""The load report protocol: how a backend tells us its load on its health-check response.

Owns: reading a load figure and a drain request out of one health response.
Rules: pure; no I/O. First match wins:
  1. header `X-Load: <number>`;
  2. a JSON object body with a numeric "load" (and optionally "state");
  3. a body that is only a number.
Anything else (an empty body, "OK", HTML) reports nothing, which counts as load 0. A figure that is
present but not a finite number >= 0, written in ASCII decimal (a JSON number in JSON), is a bad
report: the check fails with reason `bad_load`, since a backend that lies about its load must not
attract traffic by it. Python's float() reads more (`1_000`, Arabic-Indic digits, the JSON string
"3"), which no other reader of the protocol would: refused, so that a backend is not read two ways.
Header `X-Load-State` or "state" takes HAProxy agent-check's words: `drain` asks to be drained, and so
do `maint` and the down words `down`, `fail` and `stopped` (no new traffic at once; health stays the
checks' word, and maintenance the operator's); `ready`, `up` or no state on a later response ends it.
Any other word is a bad report, not a silent "ready".
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
    # A UTF-8 byte order mark, as some serialisers write one (.NET's): JSON readers may ignore it
    # (RFC 8259 §8.1), as the event stream's parse does. Left in, `{"load": 4}` behind it read as 0.
    body = body.removeprefix(_BOM)
    parsed = _json_object(body) if body else None
    drain = _drain(state_header, parsed)
    if load_header is not None:
        return Report(_header_number(load_header), drain)
    if parsed is not None:
        return Report(_json_number(parsed["load"]) if "load" in parsed else 0.0, drain)
    text = body.strip()
    if text and (_looks_numeric(text) or text.lower().lstrip(b"+-") in _NOT_FINITE):
        return Report(_text_number(text.decode("ascii")), drain)
    if _meant_as_a_load(body):
        raise BadLoad(f"load {body.decode('utf-8', 'replace').strip()[:40]!r} is not a number")
    return Report(0.0, drain)


_BOM = b"\xef\xbb\xbf"

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
        return Report(_json_number(parsed["load"]) if "load" in parsed else 0.0, _drain(None, parsed))
    if not text:
        raise BadLoad("empty load event")
    return Report(_text_number(text), False)


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


# HAProxy agent-check's words (its `maint` and its down words, `down`, `fail` and `stopped`, taken as
# drain: see the module's docstring).
_STATES = {
    "drain": True,
    "maint": True,
    "down": True,
    "fail": True,
    "stopped": True,
    "ready": False,
    "up": False,
}


def _drain(header: bytes | None, parsed: dict[str, object] | None) -> bool:
    if header is not None:
        word: object = header.decode("latin-1").strip()
    elif parsed is not None and parsed.get("state") is not None:  # JSON null: no state, as absent
        word = parsed["state"]
    else:
        return False
    drain = _STATES.get(word.lower()) if isinstance(word, str) else None
    if drain is None:
        shown = json.dumps(word) if header is None else repr(word)
        raise BadLoad(f"state {shown} is not one of drain, maint, down, fail, stopped, ready, up")
    return drain


def _looks_numeric(text: bytes) -> bool:
    return all(c in b"0123456789.+-eE" for c in text)


# A body that is a number in another spelling: digits of any script, `_` or `,` between them, hex.
_NUMBER_LIKE = re.compile(r"[+-]?(?:0[xX][0-9a-fA-F]+|[\d.,_]*\d[\d.,_]*(?:[eE][+-]?\d+)?)")


def _meant_as_a_load(body: bytes) -> bool:
    """The body was meant as a load report, in a form no reader of the protocol reads: a number in
    another spelling (`1_000`, `1,000`, `0x10`, Arabic-Indic digits), or JSON, cut or broken, that
    names "load". Reporting nothing would count it as 0: the backend would look idle and draw
    traffic (the rule for a bad load). Any other body ("OK", a page) still reports nothing."""
    text = body.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        return '"load"' in text  # not an object json reads, or `_json_object` would have taken it
    return _NUMBER_LIKE.fullmatch(text) is not None


def _header_number(value: bytes) -> float:
    """An X-Load value (the white space around it is the header's, not the number's)."""
    return _text_number(value.decode("latin-1"))


# A decimal number as JSON, C and every HTTP library write one, with a sign (refused below, by its
# value, with the clearer reason) and an optional exponent.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


def _text_number(text: str) -> float:
    """A load written as text: a bare body, an event's data, a header."""
    text = text.strip(" \t\r\n")
    if text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        raise BadLoad(f"load {text!r} is not a finite number >= 0")
    if _DECIMAL.fullmatch(text) is None:
        raise BadLoad(f"load {text!r} is not a number")
    return _finite(float(text), text)


def _json_number(value: object) -> float:
    """A JSON "load": a JSON number; a string ("3") is text, not a number, in JSON as anywhere."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        # Shown as the backend wrote it (`true`, `null`, `"3"`), not as Python's repr.
        raise BadLoad(f"load {json.dumps(value)} is not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        number = math.inf
    return _finite(number, value)


def _finite(number: float, written: object) -> float:
    if not math.isfinite(number) or number < 0:  # 1e999 is inf: json and float() read it so
        raise BadLoad(f"load {written!r} is not a finite number >= 0")
    return number + 0.0  # -0 is 0, not -0.0 in /backends
