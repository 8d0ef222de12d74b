"""The command line: flags and the config file into Settings, signals into a graceful stop.

Owns: the parser, made from the declared settings (`config.declared_settings`: each setting's flag,
help and default) and the command line's own flags (--config, the log's, --demo); reading the config
file, the exit statuses (0 after a clean stop, 2 for a bad flag, URL or config value, with one line on
stderr and never a traceback), logging set-up, and `--demo`.
Rules: flags override the file; a setting's flag comes from its declaration in `config` (none is
added here), and validation itself lives in `config`.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, NoReturn

import trio

from dispatcher import __version__
from dispatcher.expose import access_log, logs
from dispatcher.net import certificates, geoip, health
from dispatcher.settings import config
from dispatcher.settings.config import DEMO_LISTEN, ConfigError, Fallback, Settings
from dispatcher.settings.declare import Declared
from dispatcher.wiring import app, demo, entry

log = logging.getLogger("dispatcher")

EXIT_USAGE = 2
# The token is better passed in the environment than as a flag, which `ps` shows to every user.
TOKEN_ENV = "DISPATCHER_ADMIN_TOKEN"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not argparse's usage block: scripts and humans both read the last line."""
        self.exit(EXIT_USAGE, f"dispatcher: {message} (see dispatcher --help)\n")

    # Any: argparse's own overloads give back the namespace passed in, whatever its type.
    def parse_known_args(
        self, args: Iterable[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        """The words of the command line, a negative value joined to its flag (`_negative_values_joined`)."""
        words = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(_negative_values_joined(words), namespace)


# A word that starts with a minus and a digit (`-1s`, `-500ms`, `-.5`): no flag is spelt so.
_NEGATIVE = re.compile(r"-\.?[0-9]")


def _negative_values_joined(words: Iterable[str]) -> list[str]:
    """`--header-timeout -1s` as `--header-timeout=-1s`. argparse takes a word that starts with '-' for
    a flag unless it is a bare negative number, and would say "expected one argument" of a flag that
    was given one; joined, the value reaches its setting's check, which says what is wrong with it."""
    joined: list[str] = []
    for word in words:
        previous = joined[-1] if joined else ""
        if _NEGATIVE.match(word) and previous.startswith("--") and previous != "--" and "=" not in previous:
            joined[-1] = f"{previous}={word}"
        else:
            joined.append(word)
    return joined


EPILOG = """\
signals:
  SIGHUP            reload the config file and the flags; backends that stay keep their state
  SIGUSR1           reopen the access log (logrotate's postrotate)
  SIGTERM, SIGINT   graceful stop: stop accepting, answer what is in flight, wait at most
                    --grace-period; a second SIGTERM or SIGINT stops at once

admin routes (on --admin-listen; state changes need the token when one is set):
  GET /                          the status page, for a browser (buttons with the token)
  GET /status                    the JSON the status page reads
  GET /healthz                   200 while the process runs
  GET /readyz                    200 when a backend is up and not shutting down, else 503
  GET /metrics                   Prometheus text, or OpenMetrics when asked for
  GET /backends                  every backend as JSON: state, load, last check, redirects
  GET /backends/<name>           one backend
  POST /backends/<name>/state    body drain, maint or ready
  POST /backends                 add a backend: JSON {"url", "name", "weight", "pool"}
  DELETE /backends/<name>        remove a backend (both lost at a reload unless keep_runtime_backends)
  GET /pools                     every pool: state, policy, usable backends, fallback
  GET /pools/<name>              one pool, with its backends
  POST /pools/<name>/state       body maint (every answer its fallback) or ready

exit status: 0 after a stop, 1 when a port cannot be bound, 2 for a bad flag, URL or config.
Durations: 500ms, 2s, 1.5m, 1h, or a bare number of seconds.
"""


DESCRIPTION = (
    f"dispatcher {__version__}: a 307 front door that redirects every request\n"
    "to the least-loaded healthy backend."
)


# --help shows the flags in these groups, in this order, as the README's "Command line" tables do
# (tests/test_readme.py holds them to it).
FLAG_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("modes", ("-h", "-V", "--config", "--demo", "--check-config")),
    ("listeners", ("--listen", "--admin-listen", "--workers", "--reuse-port", "--max-connections")),
    (
        "backends and health checks",
        (
            "--backend",
            "--health-path",
            "--health-interval",
            "--health-timeout",
            "--health-jitter",
            "--health-ca-file",
            "--rise",
            "--fall",
            "--slow-start",
            "--keep-runtime-backends",
        ),
    ),
    ("backends from DNS", ("--dns-interval", "--dns-timeout", "--dns-resolver")),
    ("choosing a backend", ("--policy", "--hash-key", "--hash-balance-factor")),
    (
        "client addresses and regions",
        ("--trusted-proxy", "--forwarding-header", "--geoip-db", "--country-header"),
    ),
    (
        "TLS",
        ("--tls-cert", "--tls-key", "--tls-ca", "--tls-certificate", "--tls-redirect-listen", "--tls-hsts"),
    ),
    (
        "timeouts and limits",
        (
            "--header-timeout",
            "--keepalive-timeout",
            "--grace-period",
            "--idle-close-on-response",
            "--max-discard",
        ),
    ),
    ("admin API", ("--admin-token", "--admin-insecure")),
    ("logs", ("--log-level", "--log-format", "--access-log", "--access-log-format")),
)


def build_parser() -> argparse.ArgumentParser:
    """The flags: one for each declared setting (`config.declared_settings`), and the CLI's own, each
    in its group of FLAG_GROUPS."""
    parser = _Parser(
        prog="dispatcher",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,  # -h is added to the first group, not to an "options" group of its own
    )
    groups = {title: parser.add_argument_group(title) for title, _ in FLAG_GROUPS}
    group_of = {flag: groups[title] for title, flags in FLAG_GROUPS for flag in flags}
    added: dict[str, Callable[[argparse._ActionsContainer], object]] = {
        "-h": lambda g: g.add_argument(
            "-h", "--help", action="help", help="these flags, the signals and the admin routes"
        ),
        "-V": lambda g: g.add_argument(
            "-V", "--version", action="version", version=f"dispatcher {__version__}", help="print the version"
        ),
        "--config": lambda g: g.add_argument(
            "--config", metavar="FILE", help="TOML file with the same settings; flags override it"
        ),
    }
    for declared in config.declared_settings():
        if not declared.setting.toml_only:
            added[declared.flag] = partial(_add_setting, declared=declared)
    added.update(_own_flags())
    for flag, group in group_of.items():
        added.pop(flag)(group)
    assert not added, f"flags in no group of FLAG_GROUPS: {sorted(added)}"
    return parser


def _add_setting(parser: argparse._ActionsContainer, declared: Declared) -> None:
    """A setting's flag. Its argparse default is None, so that a flag not given leaves the file's value."""
    if declared.metavar is None:
        parser.add_argument(declared.flag, action="store_true", default=None, help=_help(declared))
        return
    action = "append" if declared.setting.kind.repeatable else "store"
    parser.add_argument(declared.flag, metavar=declared.metavar, action=action, help=_help(declared))


def _help(declared: Declared) -> str:
    """The declared help line, with the default when there is one to show (argparse reads % itself)."""
    text = declared.setting.help
    if declared.shown is not None:
        text += f" (default {declared.shown})"
    return text.replace("%", "%%")


def _own_flags() -> dict[str, Callable[[argparse._ActionsContainer], object]]:
    """What the command line alone sets: the log, the demo and the check of a config, each added to
    the group it is given."""
    return {
        "--log-level": lambda g: g.add_argument(
            "--log-level",
            default="info",
            choices=["debug", "info", "warning", "error"],
            help="debug adds each check's and stream event's line (default info)",
        ),
        "--log-format": lambda g: g.add_argument(
            "--log-format",
            default="text",
            choices=["text", "json"],
            help="text lines, or one JSON object a line: time, level, logger, message (default text)",
        ),
        "--demo": lambda g: g.add_argument(
            "--demo", action="store_true", help="start three demo backends and front them"
        ),
        "--check-config": lambda g: g.add_argument(
            "--check-config",
            metavar="FILE",
            help="validate this config file (with the other flags) and exit: 0, or 2 and one line "
            "naming the key",
        ),
    }


def _flag_settings(settings: Settings, args: argparse.Namespace) -> Settings:
    """Lay the flags that were given over `settings`, one at a time so errors name the flag."""
    for declared in config.declared_settings():
        if declared.setting.toml_only:
            continue
        raw = getattr(args, declared.dest)
        if raw is not None:
            settings = _apply_flag(settings, declared, raw)
    return settings


def _apply_flag(settings: Settings, declared: Declared, raw: object) -> Settings:
    try:
        return config.apply(settings, declared.table(_flag_value(declared, raw)))
    except ConfigError as error:
        # The flag's own text, unless it is a secret (the error hides it) or several (the error names one).
        kind = declared.setting.kind
        shown = error.value if kind.secret or kind.repeatable else raw
        raise ConfigError(declared.flag, shown, error.reason) from None


def _flag_value(declared: Declared, raw: object) -> object:
    """A flag's text as TOML would hold the value (a whole number for a count); a switch is True."""
    if not isinstance(raw, str):
        return raw
    text = declared.setting.kind.text
    expected = "a whole number" if text is int else "a number"
    # int() and float() read `1_000` and other scripts' digits; TOML, and every other reader, do not.
    if text in (int, float) and (not raw.isascii() or "_" in raw):
        raise ConfigError(declared.flag, raw, f"expected {expected} in ASCII digits")
    try:
        return text(raw)
    except ValueError:
        raise ConfigError(declared.flag, raw, f"expected {expected}") from None


def load_settings(args: argparse.Namespace) -> Settings:
    """The defaults (the demo's listen on loopback), then the config file (if any), then the flags."""
    settings = Settings(listen=config.parse_address("listen", DEMO_LISTEN)) if args.demo else Settings()
    given = _config_file(args)
    if given is not None:
        flag, path = given
        settings = config.apply(settings, config.parse_toml(_read_config(flag, path), path))
    if args.admin_token is None and os.environ.get(TOKEN_ENV):
        args.admin_token = os.environ[TOKEN_ENV]
    settings = _flag_settings(settings, args)
    if settings.health.ca_file is not None:
        health.tls_context(settings.health.ca_file)  # a file that cannot be used is refused now, by name
    access_log.check_path("access_log", settings.access_log)  # one that cannot be opened, too
    settings = _checked(settings, args)  # first: a certificate without its key is named as such
    if settings.tls.enabled:
        certificates.server_context(settings.tls)  # a certificate or key that cannot be used, by name
    if settings.geoip_db is not None:
        geoip.CountryDatabase.open(settings.geoip_db).close()  # a file that is no MaxMind DB, by name
    return _with_pages(settings)


def _checked(settings: Settings, args: argparse.Namespace) -> Settings:
    """The rules across settings; a failed one names the flag where the flag set the value (a user
    who typed `--hash-key` is told about `--hash-key`, not about a `hash_key` no file of theirs has)."""
    try:
        return config.check(settings, resolve=_listen_addresses)
    except ConfigError as error:
        for declared in config.declared_settings():
            raw = getattr(args, declared.dest, None)
            if declared.key == error.key and raw is not None:
                kind = declared.setting.kind  # the flag's own text, as _apply_flag shows it
                shown = error.value if kind.secret or kind.repeatable or not isinstance(raw, str) else raw
                raise ConfigError(declared.flag, shown, error.reason) from None
        raise


def _listen_addresses(host: str) -> list[str]:
    """The addresses a listener on `host` binds (trio's open_tcp_listeners binds every one that
    getaddrinfo gives); none for a name that does not resolve: the bind then says so itself."""
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in found))


def _config_file(args: argparse.Namespace) -> tuple[str, str] | None:
    """The config file to read and the flag that named it: --check-config FILE checks FILE, not a
    --config given beside it. An empty path is a path that cannot be read, not no file (an empty
    variable in a unit file must not check, or start on, the defaults)."""
    if args.check_config is not None:
        return "--check-config", args.check_config
    return None if args.config is None else ("--config", args.config)


def _read_config(flag: str, path: str) -> str:
    """The file's text; one that cannot be read is a ConfigError naming the flag that gave it."""
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError as error:
        raise ConfigError(flag, path, f"cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            flag, path, f"not UTF-8 text, as TOML is: {error.reason} at byte {error.start}"
        ) from None


# A fallback page is held in memory and sent whole: a maintenance page, not a site.
MAX_PAGE = 1024 * 1024


def _with_pages(settings: Settings) -> Settings:
    """Each pool's fallback page read now (at start and at each reload), so that a page that cannot be
    read is refused in one line naming its key, and a running page changes only with a reload."""
    fallback = _read_page("fallback.page", settings.fallback)
    pools = tuple(
        replace(p, fallback=_read_page(f"pools.{p.name}.fallback.page", p.fallback)) for p in settings.pools
    )
    return replace(settings, fallback=fallback, pools=pools)


def _read_page(key: str, fallback: Fallback) -> Fallback:
    if fallback.page is None:
        return fallback
    try:
        with open(fallback.page, "rb") as file:
            body = file.read(MAX_PAGE + 1)
    except OSError as error:
        raise ConfigError(key, fallback.page, f"cannot read: {error.strerror or error}") from None
    if len(body) > MAX_PAGE:
        raise ConfigError(
            key, fallback.page, f"larger than {MAX_PAGE // 1024} KiB: a fallback page is sent from memory"
        )
    return replace(fallback, body=body)


NO_BACKENDS = (
    "no backends: give --backend URL (repeatable) or a --config file with [[backends]] or "
    "[pools.NAME] backends, or try --demo"
)


def has_backends(settings: Settings) -> bool:
    """Some pool has a backend (or a DNS entry) to send to. The default pool may be empty when
    named pools are not, as HAProxy starts without a default_backend: the requests it would take
    get its fallback (503 unless it names another)."""
    return any(pool.backends or pool.services for pool in settings.all_pools)


def check_config(args: argparse.Namespace) -> int:
    """--check-config FILE: the file (and the flags) validated as a start would, nothing started."""
    try:
        settings = load_settings(args)
    except ConfigError as error:
        print(f"dispatcher: {error}", file=sys.stderr)
        return EXIT_USAGE
    if not has_backends(settings):
        print(f"dispatcher: {NO_BACKENDS}", file=sys.stderr)
        return EXIT_USAGE
    for warning in config.warnings(settings):
        print(f"dispatcher: warning: {warning}", file=sys.stderr)
    backends = sum(len(pool.backends) + len(pool.services) for pool in settings.all_pools)
    print(
        f"{args.check_config}: ok: {len(settings.all_pools)} pool(s), {len(settings.routes)} route(s), "
        f"{backends} backend entr{'y' if backends == 1 else 'ies'}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    previous = entry.hold()  # SIGHUP and SIGUSR1 until the signal watcher runs (`entry`)
    try:
        return _main(argv)
    finally:
        entry.release(previous)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.check_config is not None:
        return check_config(args)
    try:
        settings = load_settings(args)
    except ConfigError as error:
        print(f"dispatcher: {error}", file=sys.stderr)
        return EXIT_USAGE
    if not has_backends(settings) and not args.demo:
        print(f"dispatcher: {NO_BACKENDS}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(args.log_level, args.log_format)
    settings = _fit_connection_cap(settings)
    try:
        trio.run(_run, settings, args)
    except (OSError, BaseExceptionGroup) as error:
        cause = _os_error(error)
        if cause is None:
            raise
        # A port in use or an address we cannot bind: say which, without a traceback.
        print(f"dispatcher: {cause}", file=sys.stderr)
        return 1
    return 0


def configure_logging(level: str, form: str) -> None:
    """The root logger to stderr at `level`, as text lines or (`json`) one JSON object a line."""
    logs.configure(level.upper(), form)


# Descriptors kept for everything but client connections: listeners, backends' check connections,
# the admin listener and its clients, logs.
SPARE_DESCRIPTORS = 64


def _fit_connection_cap(settings: Settings) -> Settings:
    """Lift the soft RLIMIT_NOFILE towards the hard one for the connection cap, as HAProxy does.

    Where the hard limit is too low, HAProxy's rules: the default cap is lowered to fit (new connections
    then wait in the backlog instead of accept failing with EMFILE); a cap the operator set is kept, with
    a warning ("FD limit too low for maxconn"), and EMFILE is survived if it comes.
    """
    try:
        import resource
    except ImportError:  # not on this platform
        return settings
    spare = len(settings.backends) + SPARE_DESCRIPTORS
    wanted = settings.max_connections + spare
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return settings
    if settings.max_connections != config.DEFAULT_MAX_CONNECTIONS:
        log.warning(
            "the file descriptor limit (%d) is too low for max_connections %d: raise it with ulimit -n "
            "to %d or more, or expect accept to fail with EMFILE under load",
            soft,
            settings.max_connections,
            wanted,
        )
        return settings
    cap = max(1, soft - spare)
    log.warning("max_connections lowered to %d to fit the file descriptor limit (%d)", cap, soft)
    return replace(settings, max_connections=cap)


def _os_error(error: BaseException) -> OSError | None:
    if isinstance(error, OSError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _os_error(inner)
            if found is not None:
                return found
    return None


async def _run(settings: Settings, args: argparse.Namespace) -> None:
    stop = trio.Event()
    reload_hook: list[Callable[[], None]] = []
    reopen_hook: list[Callable[[], None]] = []  # SIGUSR1
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, stop, nursery.cancel_scope, reload_hook, reopen_hook)
        if args.demo:
            backends = await demo.start_demo(nursery)
            settings = replace(
                settings,
                backends=tuple(config.parse_backend("--demo", b.url, name=b.name) for b in backends),
            )
        done = trio.Event()
        running = await nursery.start(_app, settings, stop, done)
        reload_hook.append(partial(_reload, args, running, settings.backends if args.demo else None))
        reopen_hook.append(running.reopen_logs)
        entry.deliver({signal.SIGHUP: reload_hook[0], signal.SIGUSR1: reopen_hook[0]})  # held ones
        if args.demo:
            _print_demo(settings, running)
        await done.wait()
        nursery.cancel_scope.cancel()  # the app has drained: end the signal watcher and the demo


async def _app(
    settings: Settings,
    stop: trio.Event,
    done: trio.Event,
    *,
    task_status: trio.TaskStatus[app.Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    database = geoip.CountryDatabase.open(settings.geoip_db) if settings.geoip_db is not None else None
    if database is not None:
        log.info("%s", database.describe())
        if database.warning() is not None:
            log.warning("%s", database.warning())
    try:
        country_of = database.country_of if database is not None else None
        await app.run(settings, stop, country_of=country_of, task_status=task_status)
    finally:
        if database is not None:
            database.close()
        done.set()


def _reload(args: argparse.Namespace, running: app.Running, demo_backends: tuple[Any, ...] | None) -> None:
    """SIGHUP: read the config file and the flags again; a bad file is refused in one log line."""
    try:
        settings = load_settings(args)
    except ConfigError as error:
        log.error("reload refused, the running config stays: %s", error)
        return
    if demo_backends is not None:
        settings = replace(settings, backends=demo_backends)
    if not has_backends(settings):
        log.error("reload refused, the running config stays: no backends in any pool")
        return
    running.reload(settings)


async def _watch_signals(
    stop: trio.Event,
    scope: trio.CancelScope,
    reload_hook: list[Callable[[], None]],
    reopen_hook: list[Callable[[], None]],
) -> None:
    """SIGHUP: reload the config file. SIGUSR1: reopen the access log. First SIGTERM/SIGINT: graceful
    stop. A second one: stop now."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1) as signals:
        async for signum in signals:
            if signum in (signal.SIGHUP, signal.SIGUSR1):
                hooks = reload_hook if signum == signal.SIGHUP else reopen_hook
                if not hooks:  # the app is still starting: done once it runs
                    entry.held(signum)
                for hook in hooks:
                    hook()
                continue
            if stop.is_set():
                log.warning("second %s: stopping now", signal.Signals(signum).name)
                scope.cancel()
                return
            log.info("%s received", signal.Signals(signum).name)
            stop.set()


def _print_demo(settings: Settings, running: app.Running) -> None:
    host = settings.listen.host if settings.listen.host not in ("0.0.0.0", "::") else "127.0.0.1"
    front = f"http://{host}:{running.port}"
    admin = f"http://{settings.admin_listen.host}:{running.admin_port}"
    names = ", ".join(f"{b.name} {b.spec.url}" for b in running.pool.backends)
    print(
        f"""
dispatcher demo: {len(running.pool.backends)} backends ({names}), loads drifting between 0 and 20.
Front door {front}, admin {admin}. Try:
  curl -i {front}/hello?x=1                  # the 307 itself, Location = least-loaded backend
  curl -L {front}/hello?x=1                  # follow it: the backend says who answered
  curl -L -d 'a body' {front}/upload         # POST: 307 keeps the method, the body goes to the backend
  curl -s {admin}/metrics | grep ^dispatcher_backend   # load, effective load, state per backend
  curl {admin}/readyz
Ctrl-C stops it.
""",
        flush=True,
    )
