"""``probmcl-med plugins``: what is registered, where each name came from, where plugins were looked for.

Also the one warning line per plugin that failed to import (:func:`warn_plugin_failures`), printed by the app as
soon as the plugins are loaded, so a broken file never stops a command that does not need it.
"""

from __future__ import annotations

import json
import os
import traceback
from typing import Annotated, Any

import typer
from rich.console import Console

from probmcl_med.cli.grammar import Command
from probmcl_med.cli.tables import print_table
from probmcl_med.plugins import (
    ENTRY_POINT_GROUP,
    ENV_NO_AUTOLOAD,
    ENV_PLUGIN_DIRS,
    autoload_enabled,
    plugin_failures,
    searched_places,
)
from probmcl_med.registry import ALL_REGISTRIES

EXAMPLE = "Example: probmcl-med plugins --plugins-dir my_plugins --json"

COLUMNS = ("registry", "name", "source", "summary")

_reported: set[str] = set()


def warn_plugin_failures(console: Console, debug: bool = False) -> None:
    """One line on ``console`` per plugin that failed to import and was not reported yet (its traceback with
    ``debug``)."""
    for failure in plugin_failures():
        if failure.source in _reported:
            continue
        _reported.add(failure.source)
        names = f" ({', '.join(failure.names)} will be unknown)" if failure.names else ""
        console.print(
            f"warning: plugin {failure.source} failed to import: {failure.error}{names}; "
            "commands that do not need it go on",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        if debug:
            cause = failure.exception.__cause__ or failure.exception
            console.print("".join(traceback.format_exception(cause)), markup=False, highlight=False)


def component_rows() -> list[dict[str, str]]:
    """One row per registered name: registry, name, source (module or plugin file), summary."""
    # the modules that register the built-ins (the registries import nothing by name)
    import probmcl_med.core.likelihoods
    import probmcl_med.core.overlaps
    import probmcl_med.core.similarities
    import probmcl_med.data.datasets
    import probmcl_med.models.encoders  # noqa: F401

    return [
        {"registry": reg_name, "name": e.name, "source": e.source, "summary": e.summary}
        for reg_name, registry in ALL_REGISTRIES.items()
        for e in registry.entries()
    ]


def searched_rows() -> list[dict[str, Any]]:
    """Where plugins were looked for, as plain data (entry points included, also when autoloading is off)."""
    rows = [
        {"origin": p.origin, "place": p.place, "exists": p.exists, "found": list(p.found)} for p in searched_places()
    ]
    if autoload_enabled() and not os.environ.get(ENV_PLUGIN_DIRS, "").strip():
        rows.insert(1, {"origin": ENV_PLUGIN_DIRS, "place": "not set", "exists": False, "found": []})
    if not autoload_enabled():
        rows.append({"origin": "autoload", "place": f"off ({ENV_NO_AUTOLOAD} is set)", "exists": False, "found": []})
    return rows


def _place_line(row: dict[str, Any]) -> str:
    if row["origin"] == "autoload":
        return f"  ./plugins, PROBMCL_MED_PLUGINS and entry points: not read, autoload {row['place']}"
    found = row["found"]
    if row["place"] == "not set":
        return f"  {row['origin']}: not set"
    if row["origin"] == "entry points":
        what = f"{len(found)} ({', '.join(found)})" if found else "none installed"
        return f"  entry points (group {ENTRY_POINT_GROUP}): {what}"
    state = (f"{len(found)} file(s): {', '.join(found)}" if found else "no plugin files") if row["exists"] else "absent"
    return f"  {row['origin']}: {row['place']} ({state})"


def plugins_command(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List every registered encoder, overlap, similarity, likelihood and dataset, with where it came from, and
    where plugins were looked for (./plugins of the working directory, PROBMCL_MED_PLUGINS, --plugins-dir, entry
    points)."""
    rows = component_rows()
    searched = searched_rows()
    failed = [{"source": f.source, "error": f.error, "names": list(f.names)} for f in plugin_failures()]
    if as_json:
        typer.echo(json.dumps({"components": rows, "searched": searched, "failed": failed}, indent=2))
        return
    out = Console()
    out.print("Looked for plugins in:", highlight=False)
    for row in searched:
        out.print(_place_line(row), markup=False, highlight=False, soft_wrap=True)
    for f in failed:
        out.print(f"  failed: {f['source']}: {f['error']}", markup=False, highlight=False, soft_wrap=True)
    print_table(out, COLUMNS, [[row[c] for c in COLUMNS] for row in rows], title="Registered components")


def register(app: typer.Typer) -> None:
    """Attach ``plugins`` to the app."""
    app.command("plugins", epilog=EXAMPLE, cls=Command)(plugins_command)
