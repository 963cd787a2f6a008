"""The ``probmcl-med`` command: a thin Typer app over the library.

One entry point, :func:`main`, prints each warning as one line (``warning: ...``), turns every known error (:class:`~probmcl_med.errors.UserError`, and any
``OSError``: full disk, read-only folder, no permission) into a one-line message on stderr and exit code 1, usage errors into exit code 2, and shows the traceback only with ``--debug``.
Commands live in sibling modules, each with a ``register(app)`` function.
"""

from __future__ import annotations

import itertools
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from probmcl_med import __version__
from probmcl_med.cli import data, evaluate, explain, export, info, plugins, predict, sweep, train
from probmcl_med.cli.grammar import GLOBAL_PANEL, Group, is_flag
from probmcl_med.errors import TrainingInterrupted, UserError, one_line_message
from probmcl_med.plugins import load_plugins

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
    cls=Group,
)

stdout = Console()
stderr = Console(stderr=True)

_state: dict[str, object] = {"debug": False}


def _version_callback(value: bool) -> None:
    if value:
        stdout.print(f"probmcl-med {__version__}")
        raise typer.Exit()


def _debug_callback(value: bool) -> None:
    if value:
        _state["debug"] = True


def _plugins_dir_callback(value: list[Path] | None) -> None:
    """Load the folders of ``--plugins-dir`` where the option stands (before or after the command's name)."""
    if value:
        load_plugins(extra_dirs=list(value), autoload=False)
        _warn_plugin_failures()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_callback,
            is_eager=True,
            expose_value=False,
            help="Print the version and exit.",
            rich_help_panel=GLOBAL_PANEL,
        ),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            callback=_debug_callback,
            expose_value=False,
            help="Show full tracebacks for errors.",
            rich_help_panel=GLOBAL_PANEL,
        ),
    ] = False,
    plugins_dir: Annotated[
        list[Path] | None,
        typer.Option(
            "--plugins-dir",
            callback=_plugins_dir_callback,
            expose_value=False,
            metavar="DIR",
            help="Extra folder of plugin files to load (repeatable).",
            rich_help_panel=GLOBAL_PANEL,
        ),
    ] = None,
) -> None:
    """ProbMCL multi-label classification for medical images.

    Plugins are loaded before any command from ./plugins, $PROBMCL_MED_PLUGINS and installed packages (set
    PROBMCL_MED_NO_AUTOLOAD=1 to load only --plugins-dir). The global options (--debug, --plugins-dir, --version)
    go before or after the command's name.
    """
    load_plugins()
    _warn_plugin_failures()


def _warn_plugin_failures() -> None:
    plugins.warn_plugin_failures(stderr, debug=bool(_state["debug"]))


def _register_commands() -> None:
    """Attach the commands that live in sibling modules (once per process)."""
    if _state.get("registered"):
        return
    _state["registered"] = True
    for module in (plugins, train, evaluate, predict, explain, export, info, data, sweep):
        module.register(app)


_BOOLEAN_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0"}


def _flag_value_hint(ctx: object, argv: list[str]) -> str | None:
    """``--json true``: Click reports an unexpected extra argument; say instead that the flag takes no value."""
    command = getattr(ctx, "command", None)
    if command is None:
        return None
    flags = {opt for p in command.get_params(ctx) if is_flag(p) for opt in p.opts}
    for flag, value in itertools.pairwise(argv):
        if flag in flags and value.lower() in _BOOLEAN_WORDS:
            return f"{flag} is a flag and takes no value: write {flag} alone (drop {value!r}), leave it out for off"
    return None


def _wants_debug(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("PROBMCL_MED_DEBUG", "") not in ("", "0")


def _show_warning(message: object, category: type[Warning], *args: object, **kwargs: object) -> None:
    """A warning as one line, ``warning: MESSAGE`` (Python's default adds the file, line and source line)."""
    text = str(message).strip().splitlines()
    stderr.print(f"warning: {text[0] if text else category.__name__}", markup=False, highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns (and, as a console script, exits with) the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    _state["debug"] = _wants_debug(args)
    with warnings.catch_warnings():
        if not _state["debug"]:
            warnings.showwarning = _show_warning
        return _main(args)


def _main(args: list[str]) -> int:
    try:
        _register_commands()
        # make_context + invoke rather than app(...): Typer's main turns Ctrl-C into a silent exit code 130, and the
        # KeyboardInterrupt (with what training kept) must reach the handler below
        command = typer.main.get_command(app)
        with command.make_context("probmcl-med", args, obj={"argv": args}) as ctx:
            result = command.invoke(ctx)
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
        message = _flag_value_hint(ctx, args) or exc.format_message()
        stderr.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except _click_exceptions.ClickException as exc:
        stderr.print(f"error: {exc.format_message()}", markup=False, highlight=False)
        return exc.exit_code
    except (UserError, OSError) as exc:  # OSError: a full disk, a read-only folder, no permission (one line too)
        if _state["debug"]:
            traceback.print_exc()
        message = one_line_message(exc)
        stderr.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
        if not _state["debug"]:
            stderr.print("(run with --debug for the traceback)", style="dim")
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C: one line (training says what it kept and how to continue)
        message = str(exc) if isinstance(exc, TrainingInterrupted) else "interrupted"
        stderr.print(message, markup=False, highlight=False, soft_wrap=True)
        return 130


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
