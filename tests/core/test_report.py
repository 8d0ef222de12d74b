"""The load report protocol, first match wins: X-Load header, JSON "load", a bare number."""

import pytest

from dispatcher.core.report import BadLoad, Report, parse_report


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
