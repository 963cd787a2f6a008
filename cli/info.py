"""``probmcl-med info``: what a checkpoint holds and what its inference model costs (the paper's Table 3).

Thin: :mod:`probmcl_med.evaluation.model_info` describes the checkpoint; this prints it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from probmcl_med.cli.grammar import Command

EXAMPLE = "Example: probmcl-med info --checkpoint runs/adp --json"


def info_command(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="Run folder (or its model.pt).")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show a checkpoint: encoder, classes, normalisation, training settings, parameters (M) and GMAC."""
    # the library is imported here, not at the top (see probmcl_med/cli/__init__.py), after the path is checked
    from probmcl_med.runpaths import resolve_bundle_path

    resolve_bundle_path(checkpoint)
    from probmcl_med.evaluation.model_info import checkpoint_info, info_rows

    info = checkpoint_info(checkpoint)
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2, default=str) + "\n")
        return
    console = Console()
    table = Table(title=f"Checkpoint {info['checkpoint']}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in info_rows(info):
        table.add_row(key, value)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Attach ``info`` to the app."""
    app.command("info", cls=Command, epilog=EXAMPLE)(info_command)
