"""The ``probmcl-med`` command: a thin Typer app over the library.

One entry point, :func:`main`, turns every known error (:class:`~probmcl_med.errors.UserError`) into a one-line
message on stderr and exit code 1, usage errors into exit code 2, and shows the traceback only with ``--debug``.
Commands live in sibling modules, each with a ``register(app)`` function.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from probmcl_med import __version__
from probmcl_med.cli import data, evaluate, explain, export, info, predict, sweep, train
from probmcl_med.errors import UserError, one_line_message
from probmcl_med.plugins import load_plugins
from probmcl_med.registry import ALL_REGISTRIES

try:  # Typer >= 0.20 vendors click as typer._click; older releases use click itself.
    from typer._click import exceptions as _click_exceptions
except ImportError:  # pragma: no cover - depends on the installed Typer
    from click import exceptions as _click_exceptions

_EXIT = tuple({typer.Exit, getattr(_click_exceptions, "Exit", typer.Exit)})
_ABORT = tuple({typer.Abort, getattr(_click_exceptions, "Abort", typer.Abort)})
_NO_ARGS_HELP = getattr(_click_exceptions, "NoArgsIsHelpError", ())

app = typer.Typer(
    name="probmcl-med",
    help="ProbMCL multi-label classification for medical images: train, evaluate, predict, explain.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

stdout = Console()
stderr = Console(stderr=True)

_state: dict[str, object] = {"debug": False}


def _version_callback(value: bool) -> None:
    if value:
        stdout.print(f"probmcl-med {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
    plugins_dir: Annotated[
        list[Path] | None,
        typer.Option("--plugins-dir", help="Extra folder of plugin files to load (repeatable)."),
    ] = None,
) -> None:
    """ProbMCL multi-label classification for medical images.

    Plugins are loaded before any command from ./plugins, --plugins-dir, $PROBMCL_MED_PLUGINS and installed packages
    (set PROBMCL_MED_NO_AUTOLOAD=1 to load only --plugins-dir).
    """
    _state["debug"] = debug or bool(_state["debug"])
    load_plugins(extra_dirs=list(plugins_dir or []))


@app.command(
    "plugins",
    epilog="Example: probmcl-med --plugins-dir my_plugins plugins --json",
)
def plugins_command(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List every registered encoder, overlap, similarity, likelihood and dataset, with where it came from."""
    rows = [
        {"registry": reg_name, "name": e.name, "source": e.source, "summary": e.summary}
        for reg_name, registry in ALL_REGISTRIES.items()
        for e in registry.entries()
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="Registered components")
    for column in ("registry", "name", "source", "summary"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["registry"], row["name"], row["source"], row["summary"])
    stdout.print(table)


def _register_commands() -> None:
    """Attach the commands that live in sibling modules (once per process)."""
    if _state.get("registered"):
        return
    _state["registered"] = True
    for module in (train, evaluate, predict, explain, export, info, data, sweep):
        module.register(app)


def _wants_debug(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("PROBMCL_MED_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns (and, as a console script, exits with) the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    _state["debug"] = _wants_debug(args)
    try:
        _register_commands()
        result = app(args=args, prog_name="probmcl-med", standalone_mode=False)
        return int(result) if isinstance(result, int) else 0
    except _EXIT as exc:
        return int(exc.exit_code)
    except _ABORT:
        stderr.print("aborted")
        return 130
    except _NO_ARGS_HELP:  # `probmcl-med` alone printed the help: not an error
        return 0
    except _click_exceptions.UsageError as exc:
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            stderr.print(ctx.get_usage(), markup=False, highlight=False)
        stderr.print(f"error: {exc.format_message()}", markup=False, highlight=False)
        return 2
    except _click_exceptions.ClickException as exc:
        stderr.print(f"error: {exc.format_message()}", markup=False, highlight=False)
        return exc.exit_code
    except UserError as exc:
        if _state["debug"]:
            traceback.print_exc()
        message = one_line_message(exc)
        stderr.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
        if not _state["debug"]:
            stderr.print("(run with --debug for the traceback)", style="dim")
        return 1
    except KeyboardInterrupt:
        stderr.print("interrupted")
        return 130


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
