"""``probmcl-med explain``: Grad-CAM overlay PNGs of an image, per predicted class or per named class."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from probmcl_med.cli.grammar import Command
from probmcl_med.fileio import OVERWRITE_HELP

EXAMPLE = "Example: probmcl-med explain patch.png --checkpoint runs/adp --class stroma --class necrosis --out cams/"


def explain_command(
    image: Annotated[Path, typer.Argument(help="The image to explain.")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="Run folder (or its model.pt).")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder: one overlay PNG per class and explain.json.")
    ],
    classes: Annotated[
        list[str] | None,
        typer.Option("--class", help="Class to explain (repeatable); default: the predicted classes."),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help="Threshold deciding the predicted classes (default: checkpoint's, else 0.5)."),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto (GPU when present), cpu, cuda, cuda:N.")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
) -> None:
    """Grad-CAM for each class, blended over the image (the paper's Figure 3).

    The target layer is the deepest whose output map is at least 7x7 at the model's input size (at 224 px a ResNet's
    last stage; at 32 px an earlier one, since the last is 1x1); explain.json records it and its size.
    """
    # the library is imported here, not at the top: see probmcl_med/cli/__init__.py
    from probmcl_med.bundle import load_model_bundle, resolve_bundle_path
    from probmcl_med.calibration_file import describe_probabilities
    from probmcl_med.errors import DataError
    from probmcl_med.inference.explain import explain_image
    from probmcl_med.inference.predict import describe_thresholds

    if not image.is_file():
        raise DataError(f"image {image} does not exist")
    path = resolve_bundle_path(checkpoint)
    bundle = load_model_bundle(path)
    Console().print(
        f"thresholds: {describe_thresholds(bundle, threshold)}\nprobabilities: {describe_probabilities(bundle.calibration)}",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )
    results = explain_image(
        bundle, image, out, classes or None, threshold=threshold, device=device, checkpoint=path, overwrite=overwrite
    )
    console = Console()
    layer = results[0].layer
    if layer.warning:
        Console(stderr=True).print(f"warning: {layer.warning}", markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"Grad-CAM of {layer.name} ({layer.height}x{layer.width} at {layer.input_size} px input)", highlight=False
    )
    for r in results:
        console.print(f"{r.name}: p = {r.probability:.3f} -> {r.path}", highlight=False)


def register(app: typer.Typer) -> None:
    """Attach ``explain`` to the app."""
    app.command("explain", cls=Command, epilog=EXAMPLE)(explain_command)
