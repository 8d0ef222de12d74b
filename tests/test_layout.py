"""The package's rooms import only the rooms below them (README, Layout)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dispatcher"
# Bottom to top: a module may import its own room and those before it.
ROOMS = ["settings", "core", "protocol", "expose", "net", "processes", "wiring"]


def imported_rooms(path: Path) -> set[str]:
    """The rooms a module imports from (`from dispatcher.<room>...` and `import dispatcher.<room>...`)."""
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "dispatcher" and len(parts) > 1 and parts[1] in ROOMS:
                rooms.add(parts[1])
    return rooms


def test_every_module_sits_in_a_room() -> None:
    """Only the package's entry points and the backend middleware stay outside the rooms."""
    loose = {path.name for path in PACKAGE.glob("*.py")}
    assert loose == {"__init__.py", "__main__.py", "backend.py"}
    assert {path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__"} == set(
        ROOMS
    )


def test_no_room_imports_a_room_above_it() -> None:
    """The flow stays one way: settings → core → protocol → expose → net → processes → wiring."""
    upward = []
    for room in ROOMS:
        for path in sorted((PACKAGE / room).rglob("*.py")):
            for other in imported_rooms(path):
                if ROOMS.index(other) > ROOMS.index(room):
                    upward.append(f"{room}/{path.name} imports {other}")
    assert upward == []


def test_the_backend_middleware_imports_nothing_of_the_package() -> None:
    """Backend authors install it beside their own app: it stands alone on the standard library."""
    assert imported_rooms(PACKAGE / "backend.py") == set()
