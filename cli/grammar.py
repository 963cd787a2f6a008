"""One grammar for every command: global options after the command name too, and flags shown as flags.

The app's global options (``--debug``, ``--plugins-dir``, ``--version``) are parameters of the root group whose
work is done in their callbacks (they expose no value). :class:`Command` and :class:`Group` add those same parameter
objects to every command's parameters, so Click parses them wherever they stand on the line
(``probmcl-med train --debug`` as well as ``probmcl-med --debug train``), lists them in each command's ``--help``
under "Global options", and the tests see them through Click's own parameter list.

Typer renders a boolean flag's type as ``<bool>``, which reads as if it took a value (``--json true``); a flag's
type column is left empty here instead (its ``metavar`` is the empty string: Click never shows a flag's metavar
elsewhere, so only the rich help table changes). The other options get a short metavar (``N``, ``X``, ``PATH``,
``TEXT``) and their number range moves into the help text ("0 to 1"): Typer's ``<float range> [0.0<=x<=1.0]``
takes a third of an 80-column terminal and folds every help text into cells of four or five lines.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand, TyperGroup

GLOBAL_OPTION_NAMES = ("version", "debug", "plugins_dir")
"""Parameter names of the root group's options that every command also accepts."""

GLOBAL_PANEL = "Global options"
"""The ``--help`` panel the global options are listed in."""


def is_flag(param: Any) -> bool:
    """True for an option that takes no value (``--json``, ``--help``), as Click parses it."""
    return bool(getattr(param, "is_flag", False)) and not getattr(param, "count", False)


_METAVARS = {"int": "N", "float": "X", "str": "TEXT", "path": "PATH"}
"""Short metavars by the type Typer would show (``<float range>`` -> ``X``)."""


def _range_words(low: Any, high: Any) -> str | None:
    if low is not None and high is not None:
        return f"{low:g} to {high:g}"
    if low is not None:
        return f">= {low:g}"
    return None if high is None else f"<= {high:g}"


def _compact(param: Any) -> None:
    """A flag shows no type; an option a short metavar, its range in its help (once per parameter object)."""
    if getattr(param, "_compacted", False) or getattr(param, "param_type_name", "") != "option":
        return
    param._compacted = True
    if is_flag(param):
        if param.metavar is None:
            param.metavar = ""
        return
    display = getattr(param, "display_type", None)
    if param.metavar is None and display is not None:
        shown = str(display(None)).strip("<>").replace(" range", "")
        param.metavar = _METAVARS.get(shown.lower())  # choices and lists keep Typer's own
    words = _range_words(getattr(param, "min", None), getattr(param, "max", None))
    if words is not None:
        param._get_number_range_help_str = lambda: None  # the range is said in the help instead
        param.help = f"{param.help or ''} ({words})".strip()


def _render_flags(params: list[Any]) -> list[Any]:
    for param in params:
        _compact(param)
    return params


def global_params(command: Any, ctx: Any) -> list[Any]:
    """The root group's global options when ``command`` runs under it (none for the root itself)."""
    root = ctx.find_root().command
    if root is command:
        return []
    return [p for p in getattr(root, "params", []) if p.name in GLOBAL_OPTION_NAMES]


def _params_with_globals(command: Any, ctx: Any, params: list[Any]) -> list[Any]:
    extra = [p for p in global_params(command, ctx) if p not in params]
    if not extra:
        return _render_flags(params)
    own = list(command.params)
    rest = [p for p in params if p not in own]  # the help option
    return _render_flags([*own, *extra, *rest])


class Command(TyperCommand):
    """A Typer command that accepts the app's global options after its name and shows flags as flags."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _params_with_globals(self, ctx, super().get_params(ctx))


class Group(TyperGroup):
    """A Typer group (the app, ``data``) with the same grammar as :class:`Command`."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _params_with_globals(self, ctx, super().get_params(ctx))
