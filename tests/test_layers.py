"""The CLI is the top layer: no library module imports it.

import-linter (the contracts in pyproject.toml, run by `make test`) checks every other layer; it cannot see
``probmcl_med.cli``, which is installed from the top-level ``cli/`` folder rather than from inside ``probmcl_med/``,
so this arrow is checked here, on the source, including imports inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "probmcl_med"


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def test_no_library_module_imports_the_cli() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, name in _imported_modules(path)
        if name == "probmcl_med.cli" or name.startswith("probmcl_med.cli.")
    ]
    assert not offenders, offenders


def test_the_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from probmcl_med.cli.main import main\n    return main\n")
    assert (2, "probmcl_med.cli.main") in _imported_modules(probe)
