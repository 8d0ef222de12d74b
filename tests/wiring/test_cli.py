"""The command line as an operator meets it: errors that name their place, in one line.

Each test runs `python -m dispatcher` as a child process on loopback ports and reads its exit
status and stderr.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from dispatcher import __version__
from dispatcher.expose.logs import JsonFormatter
from dispatcher.settings.config import Address, ConfigError
from dispatcher.wiring.cli import build_parser, load_settings
from tests.helpers import (
    TestBackend,
    dispatcher_command,
    location_on_new_connection,
    poll_admin,
    unused_port,
)

DISPATCHER = [sys.executable, "-m", "dispatcher"]


async def run_dispatcher(*args: str) -> tuple[int, str]:
    """Run the dispatcher with `args` until it exits (within 20 s); its exit status and stderr."""
    with trio.fail_after(20):
        result = await trio.run_process([*DISPATCHER, *args], check=False, capture_stderr=True)
    return result.returncode, result.stderr.decode()


@pytest.mark.parametrize(
    ("listener", "flag", "extra"),
    [
        ("front door", "--listen", []),
        ("front door", "--listen", ["--workers=2", "--log-level=warning"]),
        ("admin listener", "--admin-listen", []),
    ],
    ids=["front-door", "front-door-with-workers", "admin-listener"],
)
async def test_a_port_in_use_names_the_listener_and_its_address(
    nursery: trio.Nursery, listener: str, flag: str, extra: list[str]
) -> None:
    """A port already taken: exit status 1 and one line, `<listener> <host:port>: address already in use`."""
    backend = TestBackend("b1")
    await nursery.start(backend.serve)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        ports = {"--listen": f"127.0.0.1:{unused_port()}", "--admin-listen": f"127.0.0.1:{unused_port()}"}
        ports[flag] = address
        flags = [f"{name}={value}" for name, value in ports.items()]
        status, stderr = await run_dispatcher(*flags, f"--backend={backend.url}", *extra)
    assert (status, stderr) == (1, f"dispatcher: {listener} {address}: address already in use\n")


@pytest.mark.parametrize("redirect", [False, True], ids=["admin-listen", "tls-redirect-listen"])
async def test_two_listeners_on_one_address_are_refused_before_binding(
    tmp_path: Path, redirect: bool
) -> None:
    """--listen and --admin-listen (or --tls-redirect-listen) on one address: exit 2 and one line saying
    so, not exit 1 and "address already in use" from the second bind."""
    address = f"127.0.0.1:{unused_port()}"
    flags = [f"--listen={address}", f"--admin-listen=127.0.0.1:{unused_port()}"]
    if redirect:
        flags += [f"--tls-redirect-listen={address}", "--tls-cert=c.pem", "--tls-key=k.pem"]
        line = f"--tls-redirect-listen = '{address}': the same address as listen"
    else:
        flags[1] = f"--admin-listen={address}"
        line = f"--admin-listen = '{address}': the same address as listen"
    status, stderr = await run_dispatcher(*flags, "--backend=http://127.0.0.1:1")
    assert (status, stderr) == (2, f"dispatcher: {line}: two listeners cannot share an address\n")


@pytest.mark.parametrize(
    ("listen", "admin"), [("localhost", "127.0.0.1"), ("127.0.0.1", "localhost"), ("0.0.0.0", "localhost")]
)
def test_listeners_that_clash_once_their_names_resolve_are_refused_before_binding(
    listen: str, admin: str
) -> None:
    """`localhost` binds 127.0.0.1 (and ::1): beside a listener on 127.0.0.1 or 0.0.0.0 and the same
    port it is refused in one line naming the second flag, exit 2, as two literals are. It got past
    the check and failed at the bind, exit 1."""
    port = unused_port()
    flags = [f"--listen={listen}:{port}", f"--admin-listen={admin}:{port}", "--backend=http://127.0.0.1:1"]
    with pytest.raises(ConfigError) as caught:
        load_settings(build_parser().parse_args(flags))
    assert caught.value.key == "--admin-listen"
    assert "localhost is 127.0.0.1" in caught.value.reason
    assert caught.value.reason.endswith("two listeners cannot share an address")


@pytest.mark.parametrize(("given", "missing"), [("cert", "key"), ("key", "cert")])
async def test_a_certificate_without_its_key_names_the_missing_flag(given: str, missing: str) -> None:
    """--tls-cert without --tls-key (or the other way): exit 2 and one line naming what is missing by
    its key and its flag, not `tls.key = None`."""
    flags = [f"--listen=127.0.0.1:{unused_port()}", f"--tls-{given}=x.pem", "--backend=http://127.0.0.1:1"]
    status, stderr = await run_dispatcher(*flags)
    line = f"dispatcher: tls.{missing}: missing: tls.{given} needs its {missing} (--tls-{missing})\n"
    assert (status, stderr) == (2, line)


async def test_a_toml_syntax_error_names_the_file_and_where(tmp_path: Path) -> None:
    """A config file that is not TOML: exit status 2 and one line, `path:line:column: not valid TOML`."""
    path = tmp_path / "dispatcher.toml"
    path.write_text('listen = "127.0.0.1:0"\n[health\ninterval = 2\n')
    status, stderr = await run_dispatcher(f"--config={path}", "--backend=http://127.0.0.1:1")
    assert status == 2
    assert (
        stderr == f"dispatcher: {path}:2:8: not valid TOML: Expected ']' at the end of a table declaration\n"
    )


@pytest.mark.parametrize("flag", ["--check-config", "--config"])
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("missing.toml", "cannot read: No such file or directory"),
        (".", "cannot read: Is a directory"),
        ("", "cannot read: No such file or directory"),
        ("latin1.toml", "not UTF-8 text, as TOML is: invalid continuation byte at byte 10"),
    ],
    ids=["missing", "directory", "empty-path", "not-utf-8"],
)
async def test_a_config_file_that_cannot_be_read_names_the_flag_that_gave_it(
    tmp_path: Path, flag: str, name: str, reason: str
) -> None:
    """--check-config FILE, as --config FILE: exit 2 and one line naming the flag given (not --config
    for --check-config) and the path; an empty path is refused too, not taken for no file."""
    (tmp_path / "latin1.toml").write_bytes(b'listen = "\xe9"\n')
    path = str(tmp_path / name) if name else ""
    status, stderr = await run_dispatcher(f"{flag}={path}", "--backend=http://127.0.0.1:1")
    assert (status, stderr) == (2, f"dispatcher: {flag} = {path!r}: {reason}\n")


@pytest.mark.parametrize("flag", ["--check-config", "--config"])
async def test_a_bad_value_in_a_checked_file_is_named_by_its_key_as_at_start(
    tmp_path: Path, flag: str
) -> None:
    """A file with `[health] interval = "-1s"`: the same line whether checked or started, naming the
    file's key, never the flag that gave the file."""
    path = tmp_path / "bad.toml"
    path.write_text('[health]\ninterval = "-1s"\n')
    status, stderr = await run_dispatcher(f"{flag}={path}", "--backend=http://127.0.0.1:1")
    assert (status, stderr) == (2, "dispatcher: health.interval = '-1s': must be a duration greater than 0\n")


@pytest.mark.parametrize(
    ("words", "line"),
    [
        (["--header-timeout", "-1s"], "--header-timeout = '-1s': must be a duration greater than 0"),
        (["--slow-start", "-500ms"], "--slow-start = '-500ms': must be a duration of at least 0"),
        (["--listen", "-1"], "--listen = '-1': expected HOST:PORT"),
    ],
    ids=["duration", "duration-or-off", "address"],
)
async def test_a_negative_value_as_its_own_word_is_checked_as_the_flags_value(
    words: list[str], line: str
) -> None:
    """`--header-timeout -1s`: exit 2 and the line a bad value gets, naming the flag, not argparse's
    "expected one argument" (it takes `-1s` for a flag of its own)."""
    status, stderr = await run_dispatcher(*words, "--backend=http://127.0.0.1:1")
    assert (status, stderr) == (2, f"dispatcher: {line}\n")


@pytest.mark.parametrize(
    ("args", "listen"),
    [
        (["--demo"], Address("127.0.0.1", 8080)),
        (["--demo", "--listen=0.0.0.0:9000"], Address("0.0.0.0", 9000)),
        (["--backend=http://127.0.0.1:1"], Address("0.0.0.0", 8080)),
    ],
    ids=["demo", "demo-with-listen", "not-a-demo"],
)
def test_the_demo_listens_on_loopback_unless_told(args: list[str], listen: Address) -> None:
    """--demo binds 127.0.0.1 (its URLs and its backends are loopback); --listen still decides."""
    assert load_settings(build_parser().parse_args(args)).listen == listen


async def json_log_lines(nursery: trio.Nursery, tmp_path: Path, *flags: str) -> list[dict[str, str]]:
    """The stderr lines of a real dispatcher run with --log-format json, from start to SIGTERM, parsed."""
    backend = TestBackend("b1")
    await nursery.start(backend.serve)
    port, admin_port = unused_port(), unused_port()
    command = dispatcher_command(port, admin_port, [backend.url], "--log-format=json", *flags)
    with (tmp_path / "stderr").open("wb") as stderr:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, command, check=False, stderr=stderr)
        )
        await poll_admin(admin_port, "/readyz", lambda status, _: status == 200)
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await process.wait() == 0
    return [json.loads(line) for line in (tmp_path / "stderr").read_text().splitlines()]


async def test_json_logs_are_one_object_a_line(nursery: trio.Nursery, tmp_path: Path) -> None:
    """--log-format json: every stderr line of a run is a JSON object with time, level, logger, message."""
    lines = await json_log_lines(nursery, tmp_path)
    assert all(set(line) == {"time", "level", "logger", "message"} for line in lines), lines
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]) for line in lines)
    assert {"level": "INFO", "logger": "dispatcher", "message": "stopped"} in [
        {key: line[key] for key in ("level", "logger", "message")} for line in lines
    ]
    assert any(line["message"].startswith("front door on 127.0.0.1:") for line in lines)


async def test_json_logs_of_workers_are_json_too_and_say_which_worker(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """--workers 2 --log-format json: the workers write JSON objects as the master does, with `worker`."""
    lines = await json_log_lines(nursery, tmp_path, "--workers=2")
    workers = {line["worker"] for line in lines if "worker" in line}
    assert workers == {"worker-0.0", "worker-0.1"}, lines


def test_a_json_log_line_carries_the_traceback() -> None:
    """An exception logged with its traceback: one line still, the traceback under `exception`."""
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "dispatcher", logging.ERROR, __file__, 1, "failed: %s", ("x",), sys.exc_info()
        )
    line = JsonFormatter({"worker": "worker-0.1"}).format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert (entry["message"], entry["worker"]) == ("failed: x", "worker-0.1")
    assert entry["exception"].endswith("ValueError: boom")


@pytest.mark.parametrize("flag", ["-V", "--version"])
async def test_the_version_flag(flag: str) -> None:
    """-V is --version: `dispatcher <version>` on stdout, exit status 0."""
    with trio.fail_after(20):
        result = await trio.run_process([*DISPATCHER, flag], check=False, capture_stdout=True)
    assert (result.returncode, result.stdout.decode()) == (0, f"dispatcher {__version__}\n")


@pytest.mark.parametrize(
    ("flag", "line"),
    [
        ("--hash-key=cookie:sid", 'hash_key = "cookie:sid"'),
        ("--hash-balance-factor=2", "hash_balance_factor = 2"),
        ("--admin-listen=0.0.0.0:9901", 'admin_listen = "0.0.0.0:9901"'),
    ],
)
def test_a_rule_across_settings_names_the_flag_that_set_the_value(
    flag: str, line: str, tmp_path: Path
) -> None:
    """A user who typed the flag is told about the flag (it was `hash_key`, a key no file of theirs
    had); the same value from the file is named by its key."""
    with pytest.raises(ConfigError) as caught:
        load_settings(build_parser().parse_args([flag, "--backend=http://127.0.0.1:1"]))
    assert caught.value.key == flag.partition("=")[0]
    config_file = tmp_path / "d.toml"
    config_file.write_text(f'backends = ["http://127.0.0.1:1"]\n{line}\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(build_parser().parse_args(["--config", str(config_file)]))
    assert caught.value.key == line.partition(" ")[0]


@pytest.mark.parametrize(
    "flag", ["--rise=\u0663", "--max-discard=1_000", "--fall=1_0", "--hash-balance-factor=1_5"]
)
def test_a_number_flag_takes_ascii_digits_only(flag: str) -> None:
    """int() and float() read `1_000` and other scripts' digits (`--hash-balance-factor 1_5` was 15);
    TOML and the load protocol do not: one line naming the flag."""
    with pytest.raises(ConfigError) as caught:
        load_settings(build_parser().parse_args([flag, "--policy=hash", "--backend=http://127.0.0.1:1"]))
    assert caught.value.key == flag.partition("=")[0] and "ASCII digits" in caught.value.reason


def test_max_discard_has_a_flag() -> None:
    """--max-discard BYTES sets max_discard, 0 included (no body is read: every one closes); a value
    that is not a whole number >= 0 names the flag."""
    for good in (1024, 0):
        args = build_parser().parse_args([f"--max-discard={good}", "--backend=http://127.0.0.1:1"])
        assert load_settings(args).max_discard == good
    for bad in ("-1", "1k"):
        with pytest.raises(ConfigError) as caught:
            load_settings(build_parser().parse_args([f"--max-discard={bad}", "--backend=http://127.0.0.1:1"]))
        assert caught.value.key == "--max-discard"


ONLY_NAMED_POOLS = """
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
[pools.app]
backends = [{{ url = "{url}", name = "app1" }}]
[[routes]]
name = "all"
path_prefix = "/"
pool = "app"
"""


async def test_a_config_whose_backends_are_all_in_named_pools_checks_starts_and_reloads(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """An empty default pool is allowed when a named pool has backends (HAProxy starts without a
    default_backend): --check-config says ok, the dispatcher starts and routes, a SIGHUP with the
    same file is taken. A file with no backend in any pool is refused alike by the check and the
    start: exit 2 and one line."""
    backend = TestBackend("app1")
    await nursery.start(backend.serve)
    port, admin = unused_port(), unused_port()
    config = tmp_path / "named.toml"
    config.write_text(ONLY_NAMED_POOLS.format(port=port, admin=admin, url=backend.url))
    status, stderr = await run_dispatcher(f"--check-config={config}")
    assert (status, stderr) == (0, "")
    process = await trio.lowlevel.open_process([*DISPATCHER, f"--config={config}", "--log-level=error"])
    try:
        await poll_admin(admin, "/readyz", lambda code, _: code == 200)
        request = b"GET /x?y=1 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
        assert await location_on_new_connection(port, request) == backend.url.encode() + b"/x?y=1"
        config.write_text(config.read_text().replace('pool = "app"', 'pool = "app"\nreplace_prefix = "/v2"'))
        process.send_signal(signal.SIGHUP)  # taken: the route's new rewrite shows in the Location
        with trio.fail_after(10):
            while await location_on_new_connection(port, request) != backend.url.encode() + b"/v2/x?y=1":
                await trio.sleep(0.05)  # another process: no event to wait on
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await process.wait()
    empty = tmp_path / "empty.toml"
    empty.write_text(f'listen = "127.0.0.1:{port}"\n')
    line = (
        "dispatcher: no backends: give --backend URL (repeatable) or a --config file with [[backends]] or "
        "[pools.NAME] backends, or try --demo\n"
    )
    assert await run_dispatcher(f"--check-config={empty}") == (2, line)
    assert await run_dispatcher(f"--config={empty}") == (2, line)
