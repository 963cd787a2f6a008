"""``probmcl-med export``: the trained encoder + head as ONNX or TorchScript, with its preprocessing beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from probmcl_med.cli.grammar import Command
from probmcl_med.fileio import OVERWRITE_HELP

EXAMPLE = (
    "Examples: probmcl-med export --checkpoint runs/adp --format onnx --out adp.onnx; "
    "probmcl-med export -c runs/adp --format torchscript --out adp.pt"
)


def export_command(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="Run folder (or its model.pt).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The model file to write (FILE.json is written beside it).")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="onnx (needs the export extra) or torchscript.")] = "onnx",
    check_batch: Annotated[
        int, typer.Option("--check-batch", min=1, help="Images in the batch compared with PyTorch.")
    ] = 4,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
) -> None:
    """Export encoder + head (input: normalised (B, 3, S, S) images; output: per-class probabilities).

    FILE.json records the input size, mean/std, class names, thresholds, the training mpp and the stain reference.
    The exported model and the PyTorch model are run on the same batch and the largest difference is printed.
    """
    # the library is imported here, not at the top: see probmcl_med/cli/__init__.py
    from probmcl_med.bundle import load_model_bundle, resolve_bundle_path
    from probmcl_med.inference.export import export_model

    path = resolve_bundle_path(checkpoint)
    bundle = load_model_bundle(path, device="cpu")
    report = export_model(bundle, out, fmt.lower(), check_batch=check_batch, overwrite=overwrite)
    Console().print(
        f"{report['format']} model written to {report['file']} (preprocessing in {report['metadata']}); largest "
        f"difference from PyTorch on {report['batch']} images: {report['max_abs_difference']:.2e}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Attach ``export`` to the app."""
    app.command("export", cls=Command, epilog=EXAMPLE)(export_command)
