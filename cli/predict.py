"""``probmcl-med predict``: per-class probabilities for an image, a folder of images or a whole slide."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from probmcl_med.cli.evaluate import RichProgress
from probmcl_med.cli.grammar import Command
from probmcl_med.cli.tables import print_table
from probmcl_med.errors import UserError
from probmcl_med.fileio import OVERWRITE_HELP

EXAMPLE = (
    "Examples: probmcl-med predict patches/ --checkpoint runs/adp --out preds/; "
    "probmcl-med predict slide.svs --checkpoint runs/adp --out slide-preds/ --patch-size 224 --mpp 0.5; "
    "probmcl-med predict slides/ --checkpoint runs/adp --out cohort/ (a cohort: also 'scans/*.svs' or manifest.csv; "
    "under torchrun the slides are shared among the processes)"
)

UNCERTAINTY_HELP = "MDN pi_k, var_k per class (uncertainty.csv): not calibrated; measured not to flag errors."


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
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Image, image folder or slide; or a cohort: slides, folder, glob or manifest CSV.",
            show_default=False,
        ),
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
            help="Slides: microns per pixel of the patches (default: the model's training mpp, else level-0 pixels).",
        ),
    ] = None,
    slide_mpp: Annotated[
        float | None,
        typer.Option(
            "--slide-mpp",
            help="Slides: the scan's level-0 um/px, over the file's own (needs --mpp or the model's).",
        ),
    ] = None,
    mask: Annotated[
        Path | None,
        typer.Option(
            "--mask",
            help="Slides: predict only inside this region (GeoJSON in level-0 px, or a binary image).",
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
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=0,
            help="Loader processes (default: none on the CPU; on a GPU one per core but one, at most 16).",
            show_default=False,
        ),
    ] = None,
    fail_fast: Annotated[
        bool,
        typer.Option("--fail-fast", help="Cohorts: stop at the first slide that fails (default: record it, go on)."),
    ] = False,
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
    slide's mpp, the requested mpp and the level read). --mask takes GeoJSON polygons in level-0 pixels (e.g. a
    QuPath annotation export) or a binary image of the whole slide (non-zero inside); --slide-mpp overrides the mpp
    the file declares and needs an mpp to plan with (--mpp or the model's).

    Cohorts (several slides, a folder of slides, a quoted glob, a manifest CSV with a slide column and optional
    slide_mpp, mask and id columns): each slide's outputs in OUT/<slide-id>/, then OUT/cohort.csv (a row per slide),
    OUT/failed.csv and OUT/cohort.html. A rerun skips the slides done with the same model.pt and settings. Exit code
    0 when every slide was predicted or had no tissue, 3 when some failed (listed in failed.csv).
    """
    # the library is imported here, not at the top (see probmcl_med/cli/__init__.py), after the paths are checked: a
    # missing input or checkpoint is refused before torch is imported (benchmarks/bench_refusal.py)
    from probmcl_med.runpaths import resolve_bundle_path

    given = inputs[0]
    if len(inputs) == 1 and not given.exists() and not any(c in str(given) for c in "*?["):  # a glob is a cohort's
        raise UserError(f"input {given} does not exist; give an image, a folder of images or a whole slide")
    resolve_bundle_path(checkpoint)
    from probmcl_med.bundle import load_model_bundle
    from probmcl_med.calibration_file import describe_probabilities
    from probmcl_med.cli.predict_cohort import predict_cohort_command
    from probmcl_med.core.ood import describe
    from probmcl_med.devices import resolve_device
    from probmcl_med.inference.cohort_inputs import is_cohort
    from probmcl_med.inference.inputs import input_kind, list_images
    from probmcl_med.inference.loop import UNCERTAINTY_EVIDENCE, require_mdn
    from probmcl_med.inference.predict import describe_thresholds, predict_images, predict_slide
    from probmcl_med.inference.writers import check_output_folder, write_predictions

    if is_cohort(inputs, int(tile_above * 1e6)):
        if mask is not None:
            raise UserError(
                "--mask is for one slide; give each slide of a cohort its mask in the manifest's mask column"
            )
        options = {"patch_size": patch_size, "level": level, "mpp": mpp, "slide_mpp": slide_mpp, "stride": stride,
                   "tissue_threshold": tissue_threshold, "threshold": threshold, "batch_size": batch_size,
                   "device": device, "workers": workers, "uncertainty": uncertainty, "skip_bad": skip_bad}  # fmt: skip
        predict_cohort_command(inputs, checkpoint=checkpoint, out=out, fail_fast=fail_fast, tile_above=tile_above,
                               options=options)  # fmt: skip
        return
    if fail_fast:
        raise UserError("--fail-fast is for cohorts of slides (it stops at the first slide that fails); drop it")
    check_output_folder(out, overwrite)
    input_path = inputs[0]
    kind = "images" if len(inputs) > 1 else input_kind(input_path, large_pixels=int(tile_above * 1e6))
    if kind != "slide" and (slide_mpp is not None or mask is not None):
        what = {"folder": "a folder of images", "images": "a list of images"}.get(kind, "an image")
        raise UserError(f"--slide-mpp and --mask are for whole slides; {input_path} is {what}")
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
        Console().print(
            f"uncertainty: var_k was {UNCERTAINTY_EVIDENCE}.", highlight=False, soft_wrap=True, markup=False
        )
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
            paths = list_images(input_path) if kind == "folder" else list(inputs)
            predictions = predict_images(bundle, paths, progress=progress, skip_bad=skip_bad, **options)
    meta = {
        "checkpoint": str(path),
        "input": str(input_path) if len(inputs) == 1 else [str(p) for p in inputs],
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
    if predictions.ood is None:
        console.print(f"no out-of-distribution check: {path} keeps no training-feature statistics (a model saved "
                      "before its training finished, or by an earlier version)", highlight=False, soft_wrap=True)  # fmt: skip
    else:
        line = describe(predictions.ood, slide=kind == "slide", units="patches" if kind == "slide" else "images")
        if predictions.ood.flagged.any():  # a warning: on stderr, as one line
            err.print(f"[yellow]warning:[/yellow] {escape(line)}; {out}/ood.csv lists each", highlight=False,
                      soft_wrap=True)  # fmt: skip
        else:
            console.print(line, highlight=False, soft_wrap=True, markup=False)
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
