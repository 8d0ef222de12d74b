"""The load report protocol, first match wins: X-Load header, JSON "load", a bare number."""

import pytest

from dispatcher.core.report import BadLoad, Report, parse_event, parse_report


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ([(b"x-load", b"7")], b'{"load": 3}', Report(7.0, False)),  # header first
        ([(b"x-load", b" 2.5 ")], b"", Report(2.5, False)),
        ([], b'{"load": 3}', Report(3.0, False)),
        ([], b'{"load": 3, "state": "drain"}', Report(3.0, True)),
        ([], b"12\n", Report(12.0, False)),
        ([], b"", Report(0.0, False)),  # nothing reported counts as 0
        ([], b"OK", Report(0.0, False)),
        ([], b"<html>fine</html>", Report(0.0, False)),
        ([], b'{"status": "ok"}', Report(0.0, False)),
        ([], b"[1, 2]", Report(0.0, False)),
        ([(b"x-load", b"1"), (b"x-load-state", b"drain")], b"", Report(1.0, True)),
        ([(b"x-load-state", b"ready")], b'{"load": 1, "state": "drain"}', Report(1.0, False)),
        # HAProxy agent-check's other words: maint and down take no new traffic, as drain; up is ready.
        ([(b"x-load", b"1"), (b"x-load-state", b" MAINT ")], b"", Report(1.0, True)),
        ([], b'{"load": 2, "state": "down"}', Report(2.0, True)),
        ([], b'{"load": 2, "state": "up"}', Report(2.0, False)),
        ([], b"200 OK", Report(0.0, False)),  # not only a number: reports nothing, as "OK" does
        ([], b"12abc", Report(0.0, False)),
        ([], b'{"status": "ok"', Report(0.0, False)),  # broken JSON that is no load report
        ([(b"x-load", b"-0")], b"", Report(0.0, False)),
        # HAProxy's down words `fail` and `stopped` too; JSON null is no state, as the key left out.
        ([(b"x-load", b"1"), (b"x-load-state", b"stopped")], b"", Report(1.0, True)),
        ([], b'{"load": 2, "state": "fail"}', Report(2.0, True)),
        ([], b'{"load": 2, "state": null}', Report(2.0, False)),
        # A UTF-8 byte order mark before the body (.NET's serialisers write one) is not the body's.
        ([], b'\xef\xbb\xbf{"load": 4}', Report(4.0, False)),
        ([], b"\xef\xbb\xbf12", Report(12.0, False)),
    ],
)
def test_report(headers: list[tuple[bytes, bytes]], body: bytes, expected: Report) -> None:
    """Each form of the protocol yields the load and drain flag the README documents."""
    assert parse_report(headers, body) == expected


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ([(b"x-load", b"high")], b""),
        ([(b"x-load", b"-1")], b""),
        ([(b"x-load", b"nan")], b""),
        ([(b"x-load", b"inf")], b""),
        ([], b'{"load": "lots"}'),
        ([], b'{"load": true}'),
        ([], b'{"load": null}'),
        ([], b"-3"),
        ([], b"1e999"),
        ([(b"x-load", b"1_000")], b""),  # float() reads these; no other reader of the protocol would
        ([(b"x-load", "٣".encode())], b""),
        ([], b'{"load": "3"}'),  # a JSON string is not a JSON number
        # A body meant as a load in a form no reader reads: it counted as 0, drawing traffic.
        ([], b"1_000"),
        ([], "\u0661\u0660\u0660\u0660".encode()),  # Arabic-Indic 1000
        ([], b"0x10"),
        ([], b"1,000"),
        ([], b'{"load": 3'),
        ([], b'{"load": 1' + b"0" * 400 + b"}"),
        ([], b'{"load": 1, "state": "bogus"}'),  # a state word nobody knows is not a silent "ready"
        ([], b'{"load": 1, "state": 1}'),
        ([(b"x-load", b"1"), (b"x-load-state", b"normal")], b""),
    ],
)
def test_bad_load_is_refused(headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """A load that is present but not a finite number >= 0 is a bad report, not a zero."""
    with pytest.raises(BadLoad):
        parse_report(headers, body)


@pytest.mark.parametrize(("body", "shown"), [(b'{"load": true}', "true"), (b'{"load": null}', "null")])
def test_a_json_load_that_is_no_number_is_shown_as_the_backend_wrote_it(body: bytes, shown: str) -> None:
    """The check's detail quotes the JSON value (`true`, `null`), not Python's `True` or `None`."""
    with pytest.raises(BadLoad) as caught:
        parse_report([], body)
    assert str(caught.value) == f"load {shown} is not a number"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("3", Report(3.0, False)),
        (" 2.5e1 ", Report(25.0, False)),
        ('{"load": 4, "state": "maint"}', Report(4.0, True)),
        ('{"load": 4, "state": "Ready"}', Report(4.0, False)),
    ],
)
def test_event(data: str, expected: Report) -> None:
    """A stream event's data: the same forms and words as a check's body."""
    assert parse_event(data) == expected


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("1_000", "load '1_000' is not a number"),
        ("٣", "load '٣' is not a number"),
        ('{"load": "3"}', 'load "3" is not a number'),
        ("inf", "load 'inf' is not a finite number >= 0"),
        (
            '{"load": 1, "state": "bogus"}',
            'state "bogus" is not one of drain, maint, down, fail, stopped, ready, up',
        ),
    ],
)
def test_bad_event_is_refused_with_its_reason(data: str, reason: str) -> None:
    """What the failed check's detail says (the stream fails with bad_load and reconnects)."""
    with pytest.raises(BadLoad) as caught:
        parse_event(data)
    assert str(caught.value) == reason


def test_minus_zero_is_zero() -> None:
    """`X-Load: -0` is 0, not the -0.0 /backends showed."""
    assert str(parse_report([(b"x-load", b"-0")], b"").load) == "0.0"
    assert str(parse_event("-0").load) == "0.0"
