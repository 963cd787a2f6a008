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


def _module_graph() -> dict[str, set[str]]:
    """Each library module and the library modules it imports (at the top or inside functions); ``from pkg import
    mod`` imports the module ``pkg.mod`` (as import-linter counts it), ``from mod import name`` the module ``mod``."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    edges.add(
                        f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                    )
        graph[name] = {m for m in edges if m in modules and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circles() -> None:
    """No two library modules import each other, directly or through others (imports inside functions count)."""
    assert not _cycles(_module_graph())


def test_the_cycle_check_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_registries_import_nothing_by_name() -> None:
    """The registries hold what the modules that define it register; they never import a module from a string (an
    edge import-linter cannot see, up through the layers)."""
    source = (PACKAGE / "registry.py").read_text(encoding="utf-8")
    assert "importlib" not in source and "import_module" not in source
