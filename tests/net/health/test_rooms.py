"""The health package's modules import only those below them (its `__init__` lists the order)."""

from __future__ import annotations

import ast
from pathlib import Path

import dispatcher.net.health

PACKAGE = Path(dispatcher.net.health.__file__).parent
# Bottom to top, as the package's docstring lists them.
ORDER = ["schedule", "client", "logs", "stream", "tls", "probe", "sweep", "checks"]


def health_imports(path: Path) -> set[str]:
    """The modules of the health package that a module imports (`from dispatcher.net.health.<m> ...`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("dispatcher.net.health.")
        ):
            found.add(node.module.split(".")[3])
    return found


def test_every_module_of_the_package_has_its_place_in_the_order() -> None:
    """A new module says where it stands: the order lists every module but `__init__`."""
    assert {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"} == set(ORDER)


def test_no_module_imports_one_above_it() -> None:
    """The flow stays one way inside the checks: the schedule at the bottom, `checks` at the top."""
    upward = [
        f"{module} imports {other}"
        for module in ORDER
        for other in health_imports(PACKAGE / f"{module}.py")
        if ORDER.index(other) >= ORDER.index(module)
    ]
    assert upward == []
