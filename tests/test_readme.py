"""The README against the code: the lists an operator reads there are the ones the program has."""

from __future__ import annotations

import re
from pathlib import Path

import trio

from dispatcher import __version__
from dispatcher.core.stats import RESPONSE_CODES
from dispatcher.settings.config import Settings, apply, check, declared_settings, parse_toml
from dispatcher.wiring.cli import build_parser
from tests.helpers import admin_get, settings_for, start_backends, start_dispatcher

README = Path(__file__).resolve().parent.parent / "README.md"


def section(title: str) -> str:
    """The README's text under the heading `title`, up to the next heading of any level (a `#` line
    inside a code block is not a heading)."""
    lines: list[str] | None = None
    fenced = False
    for line in README.read_text(encoding="utf-8").splitlines():
        fenced = fenced != line.startswith("```")
        heading = not fenced and re.match(r"#+ ", line) is not None
        if heading and lines is not None:
            break
        if lines is not None:
            lines.append(line)
        elif heading and line.partition(" ")[2] == title:
            lines = []
    assert lines is not None, f"no section {title!r} in README.md"
    return "\n".join(lines) + "\n"


def table_rows(text: str) -> list[list[str]]:
    """The body rows of every Markdown table in `text` (each one's header and rule skipped), as lists
    of cells."""
    rows: list[list[str]] = []
    in_table = 0  # lines of the current table so far
    for line in text.splitlines():
        in_table = in_table + 1 if line.startswith("|") else 0
        if in_table > 2:
            rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def flag_groups() -> list[tuple[str, list[str]]]:
    """The README's flag tables: each one's bold title and its flags' first names, in order."""
    groups: list[tuple[str, list[str]]] = []
    for line in section("Command line").splitlines():
        title = re.fullmatch(r"\*\*(.+)\*\*", line)
        if title:
            groups.append((title[1], []))
        elif groups and (flag := re.match(r"\| `(--?[A-Za-z][a-z-]*)", line)):
            groups[-1][1].append(flag[1])
    return groups


def codes_in(text: str) -> set[int]:
    """The status codes written as code in `text`: `307 Temporary Redirect`, `400` and close."""
    return {int(code) for code in re.findall(r"`([1-5][0-9][0-9])\b", text)}


def answered_codes() -> set[int]:
    """The statuses of the README's "What the front door answers" table (its answer column)."""
    return set().union(
        *(codes_in(answer) for _, answer in table_rows(section("What the front door answers")))
    )


async def test_the_codes_exported_are_those_the_front_door_answers(nursery: trio.Nursery) -> None:
    """dispatcher_responses_total has one series per status the front door can send, and no other."""
    backends = await start_backends(nursery, 0)
    dispatcher = await start_dispatcher(nursery, settings_for(backends))
    scrape = (await admin_get(dispatcher, "/metrics")).text
    exported = {
        int(code) for code in re.findall(r'^dispatcher_responses_total\{code="(\d+)"\}', scrape, re.M)
    }
    assert exported == answered_codes()


def test_the_metrics_table_lists_the_codes_of_the_code() -> None:
    """The README's row for dispatcher_responses_total names exactly RESPONSE_CODES, in order."""
    [row] = [row for row in table_rows(section("Metrics")) if row[0] == "`dispatcher_responses_total`"]
    listed = [int(code) for code in re.findall(r"`([1-5][0-9][0-9])`", row[3])]
    assert listed == list(RESPONSE_CODES)


def test_the_config_example_is_a_valid_config() -> None:
    """The README's example file parses, durations with units included, and says what it shows."""
    [example] = re.findall(r"```toml\n(.*?)```", section("Config file"), re.DOTALL)
    settings = apply(Settings(), parse_toml(example))
    assert (settings.header_timeout, settings.slow_start, settings.health.interval) == (10.0, 30.0, 2.0)
    assert [backend.name for backend in settings.backends] == ["web-1", "10.0.0.12:443"]


def readme_flags() -> list[str]:
    """The flags of the README's flag table (`-V`, `--version`, `--listen`, ...), in its order."""
    rows = table_rows(section("Command line"))
    return [flag for row in rows for flag in re.findall(r"`(--?[A-Za-z][a-z-]*)", row[0])]


def test_the_flag_table_lists_every_flag_of_the_parser() -> None:
    """Every option the parser takes has its row in the README, and every flag there exists, once."""
    parser_flags = [flag for action in build_parser()._actions for flag in action.option_strings]
    listed = readme_flags()
    assert len(listed) == len(set(listed)), "a flag listed twice"
    assert set(listed) == set(parser_flags)


def test_help_groups_the_flags_as_the_readme_does() -> None:
    """--help's groups are the README's flag tables: the same titles, flags and order (issue 14)."""
    parser = build_parser()
    in_help = [
        (group.title, [action.option_strings[0] for action in group._group_actions])
        for group in parser._action_groups
        if group._group_actions
    ]
    assert [(title.lower(), flags) for title, flags in flag_groups()] == [
        (str(title).lower(), flags) for title, flags in in_help
    ]
    text = parser.format_help()
    assert text.index("\nmodes:\n") < text.index("\nlisteners:\n") < text.index("\nlogs:\n")
    assert "\noptions:\n" not in text  # -h is in the first group, not in one of its own


def test_the_flag_table_gives_each_setting_its_declared_default() -> None:
    """A setting's row shows the default of its one declaration (`2s`, `0.0.0.0:8080`), as code; a
    setting with none to show (off, unset) shows no code there."""
    defaults = {
        flag: re.match(r"`([^`]*)`", row[1])
        for row in table_rows(section("Command line"))
        for flag in re.findall(r"`(--?[A-Za-z][a-z-]*)", row[0])
    }
    for declared in declared_settings():
        if declared.setting.toml_only:
            continue
        shown = defaults[declared.flag]
        assert (shown and shown[1]) == declared.shown, declared.flag


def test_every_example_of_routes_and_pools_is_a_valid_config() -> None:
    """Each TOML block of "Routes and pools" parses, passes the checks across settings, and routes only
    to pools it defines: the examples are what users copy."""
    text = README.read_text(encoding="utf-8")
    whole = text.split("\n## Routes and pools\n", 1)[1].split("\n## ", 1)[0]  # its subsections too
    blocks = re.findall(r"```toml\n(.*?)```", whole, re.DOTALL)
    assert len(blocks) >= 6
    for block in blocks:
        settings = check(apply(Settings(), parse_toml(block)))
        assert settings.backends or settings.pools, block


def test_the_config_example_gives_a_backend_its_own_health() -> None:
    """The example's web-1 sets its own health keys; the other backend has the global [health]."""
    [example] = re.findall(r"```toml\n(.*?)```", section("Config file"), re.DOTALL)
    settings = apply(Settings(), parse_toml(example))
    web, other = (backend.health for backend in settings.backends)
    assert (web.interval, web.timeout, web.fall, web.rise) == (5.0, 2.0, 2, settings.health.rise)
    assert other == settings.health


def admin_routes() -> list[str]:
    """The routes of the README's admin API table: `GET /healthz`, `POST /backends/<name>/state`, ..."""
    return [row[0].strip("`") for row in table_rows(section("Admin API"))]


def test_help_names_the_version_the_signals_and_every_admin_route() -> None:
    """--help: the version, what SIGHUP, SIGTERM and SIGINT do (and a second one), the README's routes."""
    text = build_parser().format_help()
    assert f"dispatcher {__version__}" in text
    assert all(word in text for word in ("SIGHUP", "SIGTERM", "SIGINT", "a second SIGTERM or SIGINT"))
    routes = admin_routes()
    assert routes and all(re.search(rf"^  {re.escape(route)} ", text, re.MULTILINE) for route in routes), (
        routes
    )
