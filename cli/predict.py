"""``probmcl-med predict``: per-class probabilities for an image, a folder of images or a whole slide."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from probmcl_med.cli.evaluate import RichProgress
from probmcl_med.cli.grammar import Command
from probmcl_med.cli.tables import print_table
from probmcl_med.errors import UserError
from probmcl_med.fileio import OVERWRITE_HELP

EXAMPLE = (
    "Examples: probmcl-med predict patches/ --checkpoint runs/adp --out preds/; "
    "probmcl-med predict slide.svs --checkpoint runs/adp --out slide-preds/ --patch-size 224 --mpp 0.5"
)

UNCERTAINTY_HELP = (
    "Add, per class, the stage-1 MDN's mixture weight pi_k and variance var_k for the image's encoder features "
    "(uncertainty.csv): the spread the contrastive objective gave the class's component, an exploratory epistemic "
    "signal. Not a calibrated probability and not validated here as a predictor of errors. Needs a checkpoint that "
    "kept its MDN."
)


TABLE_LIMIT = 20
"""Up to this many images, ``predict`` prints each one's predicted classes."""


def predicted_cell(names: list[str], probs: Any, thresholds: Any) -> str:
    """``stroma 0.91, necrosis 0.62`` (the classes at or over their threshold, most probable first), or ``none
    (highest: stroma 0.41)``."""
    order = sorted(range(len(names)), key=lambda k: -float(probs[k]))
    chosen = [k for k in order if probs[k] >= thresholds[k]]
    if not chosen:
        return f"none (highest: {names[order[0]]} {float(probs[order[0]]):.2f})"
    return ", ".join(f"{names[k]} {float(probs[k]):.2f}" for k in chosen)


def print_predictions(predictions: Any, console: Console) -> None:
    """Per image (when there are at most :data:`TABLE_LIMIT`): its name and its predicted classes."""
    if not 0 < len(predictions.ids) <= TABLE_LIMIT:
        return
    rows = [
        [Path(row["image"]).name, predicted_cell(predictions.class_names, probs, predictions.thresholds)]
        for row, probs in zip(predictions.ids, predictions.probs, strict=True)
    ]
    print_table(console, ["image", "predicted (probability)"], rows)


def predict_command(
    input_path: Annotated[
        Path, typer.Argument(help="An image, a folder of images, or a whole slide (.svs, .tif, ...).")
    ],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="Run folder (or its model.pt).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (written whole or not at all).")],
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help="Threshold for every class (default: the checkpoint's tuned ones, else 0.5)."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images or patches per forward pass.")] = 32,
    uncertainty: Annotated[bool, typer.Option("--uncertainty", help=UNCERTAINTY_HELP)] = False,
    patch_size: Annotated[
        int | None,
        typer.Option("--patch-size", min=1, help="Slides: patch side in pixels of --level (default: model input)."),
    ] = None,
    level: Annotated[
        int | None,
        typer.Option(
            "--level", min=0, help="Slides: read patches at this pyramid level, in its pixels (instead of an mpp)."
        ),
    ] = None,
    mpp: Annotated[
        float | None,
        typer.Option(
            "--mpp",
            help="Slides: microns per pixel of the patches (read from the nearest finer level and resized); default: "
            "the mpp the model was trained at when model.pt records one, else level 0 pixels.",
        ),
    ] = None,
    slide_mpp: Annotated[
        float | None,
        typer.Option(
            "--slide-mpp",
            help="Slides: the scan's level-0 microns per pixel; overrides what the file declares (needs an mpp to "
            "plan with: --mpp or the model's).",
        ),
    ] = None,
    mask: Annotated[
        Path | None,
        typer.Option(
            "--mask",
            help="Slides: predict only inside this region: GeoJSON polygons in level-0 pixels (e.g. a QuPath "
            "annotation export) or a binary image of the whole slide (non-zero inside).",
        ),
    ] = None,
    tile_above: Annotated[
        float,
        typer.Option("--tile-above", help="Plain TIFF images above this many megapixels are tiled like slides."),
    ] = 25.0,
    tissue_threshold: Annotated[
        float,
        typer.Option(
            "--tissue-threshold", min=0.0, max=1.0, help="Slides: minimum tissue fraction of a patch (0 keeps all)."
        ),
    ] = 0.5,
    stride: Annotated[
        int | None,
        typer.Option("--stride", min=1, help="Slides: grid step in pixels of --level (default: the patch size)."),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto (GPU when present), cpu, cuda, cuda:N.")] = "auto",
    workers: Annotated[int, typer.Option("--workers", min=0, help="DataLoader worker processes.")] = 0,
    skip_bad: Annotated[
        bool,
        typer.Option(
            "--skip-bad", help="Predict the readable images (or patches), list the others (also in meta.json)."
        ),
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
) -> None:
    """Predict per-class probabilities and labels; for a slide, per-patch probabilities and a heat map per class.

    Images: predictions.csv (one probability column per class), labels.csv, meta.json; for up to 20 images a table
    of the predicted classes with their probabilities. Slides (and plain TIFFs above --tile-above): patches.csv (x, y
    in level-0 pixels, level, size in pixels of that level, tissue fraction, probabilities, labels),
    predictions.geojson (QuPath: File > Import objects), thumbnail.png, heatmaps/CLASS.png, meta.json (with the
    slide's mpp, the requested mpp and the level read).
    """
    # the library is imported here, not at the top: see probmcl_med/cli/__init__.py
    from probmcl_med.bundle import load_model_bundle, resolve_bundle_path
    from probmcl_med.calibration_file import describe_probabilities
    from probmcl_med.devices import resolve_device
    from probmcl_med.inference.inputs import input_kind, list_images
    from probmcl_med.inference.loop import require_mdn
    from probmcl_med.inference.predict import describe_thresholds, predict_images, predict_slide
    from probmcl_med.inference.writers import check_output_folder, write_predictions

    check_output_folder(out, overwrite)
    kind = input_kind(input_path, large_pixels=int(tile_above * 1e6))
    if kind != "slide" and (slide_mpp is not None or mask is not None):
        raise UserError(
            f"--slide-mpp and --mask are for whole slides; {input_path} is {'a folder of images' if kind == 'folder' else 'an image'}"
        )
    if kind == "slide" and mpp is not None and level is None:  # a resolution slip: refused before the model loads
        from probmcl_med.data.imageio import SLIDES
        from probmcl_med.data.mpp import level0_mpp

        level0_mpp(SLIDES.get(str(input_path)), input_path, slide_mpp)
    path = resolve_bundle_path(checkpoint)
    dev = resolve_device(device)
    bundle = load_model_bundle(path, device=dev)
    Console().print(
        f"thresholds: {describe_thresholds(bundle, threshold)}\nprobabilities: {describe_probabilities(bundle.calibration)}",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )
    if uncertainty:
        require_mdn(bundle, path)
    options = {
        "threshold": threshold,
        "batch_size": batch_size,
        "device": dev,
        "workers": workers,
        "uncertainty": uncertainty,
    }
    err = Console(stderr=True)
    with RichProgress(err) as progress:
        if kind == "slide":
            predictions = predict_slide(
                bundle,
                input_path,
                patch_size=patch_size,
                level=level,
                mpp=mpp,
                slide_mpp=slide_mpp,
                mask=mask,
                tissue_threshold=tissue_threshold,
                stride=stride,
                progress=progress,
                skip_bad=skip_bad,
                **options,
            )
        else:
            paths = list_images(input_path) if kind == "folder" else [input_path]
            predictions = predict_images(bundle, paths, progress=progress, skip_bad=skip_bad, **options)
    meta = {
        "checkpoint": str(path),
        "input": str(input_path),
        "encoder": bundle.encoder_name,
        "device": str(dev),
        "probabilities": describe_probabilities(bundle.calibration),
    }
    write_predictions(out, predictions, meta, overwrite=overwrite)
    console = Console()
    if kind == "slide" and predictions.no_tissue:
        stats = (predictions.slide or {}).get("tissue_mask") or {}
        width, height = stats.get("thumbnail", [0, 0])
        console.print(
            f"no tissue found on {input_path} ({stats.get('coloured_pixels')} of the thumbnail's "
            f"{width * height} pixels coloured above saturation "
            f"{stats.get('saturation_threshold')}, none left as tissue); empty patches.csv and predictions.geojson "
            f"written to {out}",
            highlight=False,
            soft_wrap=True,
        )
    elif kind == "slide":
        info = predictions.slide or {}
        plan = info.get("mpp")
        where = (
            f"at {plan['mpp']:g} um/px, read from level {plan['level']} ({plan['level_mpp']:.4g} um/px)"
            if plan
            else f"at level {info.get('level')} in its pixels; {declared_words(info.get('resolution') or {})}"
        )
        console.print(
            f"{info.get('patches_on_tissue')} tissue patches of {info.get('patches_in_grid')} in the grid "
            f"({info.get('patch_size')} px {where}); written to {out}/patches.csv, predictions.geojson and heatmaps/",
            highlight=False,
            soft_wrap=True,
        )
    else:
        print_predictions(predictions, console)
        console.print(
            f"{len(predictions.ids)} image(s) predicted; written to {out}/predictions.csv and labels.csv",
            highlight=False,
        )
    if predictions.skipped:
        err.print(f"skipped {len(predictions.skipped)} unreadable input(s):", highlight=False)
        for item in predictions.skipped:
            err.print(f"  {item['error']}", markup=False, highlight=False, soft_wrap=True)


def declared_words(resolution: dict[str, Any]) -> str:
    """``the slide declares 0.499 um/px (openslide.mpp-x (from aperio.MPP))`` or ``the slide declares no mpp``."""
    value = resolution.get("declared_mpp")
    if value is None:
        return "the slide declares no mpp"
    return f"the slide declares {value:.4g} um/px ({resolution.get('declared_source')})"


def register(app: typer.Typer) -> None:
    """Attach ``predict`` to the app."""
    app.command("predict", cls=Command, epilog=EXAMPLE)(predict_command)
