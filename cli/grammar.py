"""One grammar for every command: global options after the command name too, and flags shown as flags.

The app's global options (``--debug``, ``--plugins-dir``, ``--version``) are parameters of the root group whose
work is done in their callbacks (they expose no value). :class:`Command` and :class:`Group` add those same parameter
objects to every command's parameters, so Click parses them wherever they stand on the line
(``probmcl-med train --debug`` as well as ``probmcl-med --debug train``), lists them in each command's ``--help``
under "Global options", and the tests see them through Click's own parameter list.

Typer renders a boolean flag's type as ``<bool>``, which reads as if it took a value (``--json true``); a flag's
type column is left empty here instead (its ``metavar`` is the empty string: Click never shows a flag's metavar
elsewhere, so only the rich help table changes).
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


def _render_flags(params: list[Any]) -> list[Any]:
    for param in params:
        if is_flag(param) and param.metavar is None:
            param.metavar = ""
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
