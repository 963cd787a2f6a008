"""Predictions for image files and whole slides with a loaded model bundle.

:func:`predict_images` and :func:`predict_slide` build the inputs (:mod:`probmcl_med.inference.inputs`: the bundle's
deterministic eval transform and normalisation), run the one batched loop (:mod:`probmcl_med.inference.loop`) and
return a :class:`Predictions`; :func:`probmcl_med.inference.writers.write_predictions` writes them as a folder.
Everything here is library code (no printing): the CLI's ``predict`` command wraps it with a progress bar.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probmcl_med.bundle import ModelBundle
from probmcl_med.data.stain import StainNormalized, fit_locations
from probmcl_med.data.tiling import SlideGrid, tile_slide
from probmcl_med.devices import resolve_device
from probmcl_med.errors import CheckpointError, DataError
from probmcl_med.inference.inputs import ItemDataset, eval_transform, prediction_batches
from probmcl_med.inference.loop import ProgressHook, require_mdn, run_bundle
from probmcl_med.operating_point import DEFAULT_THRESHOLD, THRESHOLDS_FILE


@dataclass
class Predictions:
    """Per-input results of :func:`predict_images` or :func:`predict_slide`.

    Attributes:
        kind: "images" or "slide".
        ids: one dict per row with its identifying columns (``{"image": path}`` or ``{"x", "y", "level", "size"}``).
        probs: (N, C) probabilities.
        thresholds: (C,) decision thresholds used (predicted when ``prob >= threshold``).
        class_names: C names.
        pi, var: (N, C) MDN weight and variance per class, when uncertainty was asked for.
        slide: for a slide, ``{"path", "dimensions", "level", "downsample", "patch_size", "grid": SlideGrid}``.
        skipped: with ``skip_bad``, the inputs that could not be read: ``{"image": path, "error": message}``.
    """

    kind: str
    ids: list[dict[str, Any]]
    probs: np.ndarray
    thresholds: np.ndarray
    class_names: list[str]
    pi: np.ndarray | None = None
    var: np.ndarray | None = None
    slide: dict[str, Any] | None = field(default=None, repr=False)
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def no_tissue(self) -> bool:
        """True for a slide on which no tissue was found (no rows: a result, not an error)."""
        return self.slide is not None and self.slide.get("status") == NO_TISSUE

    @property
    def predicted(self) -> np.ndarray:
        """(N, C) booleans: ``probs >= thresholds``."""
        return self.probs >= self.thresholds[None, :]

    def labels(self) -> list[str]:
        """Per row, the predicted class names joined with ``|`` (empty when none)."""
        return ["|".join(n for n, on in zip(self.class_names, row, strict=True) if on) for row in self.predicted]


def decision_thresholds(bundle: ModelBundle, threshold: float | None) -> np.ndarray:
    """(C,) thresholds: ``threshold`` for every class when given, else the model's tuned ones, else 0.5.

    The tuned ones come from ``thresholds.json`` beside ``model.pt`` (:mod:`probmcl_med.operating_point`), or from a
    bundle written by an earlier version that stored them inside.

    Raises:
        DataError: ``threshold`` outside [0, 1].
        CheckpointError: no ``threshold`` given and the model's ``thresholds.json`` is stale or malformed.
    """
    num_classes = len(bundle.class_names)
    if threshold is not None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise DataError(f"--threshold {threshold}: give a probability in [0, 1]")
        return np.full(num_classes, float(threshold))
    if bundle.threshold_problem is not None:
        raise CheckpointError(bundle.threshold_problem)
    if bundle.thresholds is not None:
        return np.asarray(bundle.thresholds, dtype=np.float64)
    return np.full(num_classes, DEFAULT_THRESHOLD)


def describe_thresholds(bundle: ModelBundle, threshold: float | None) -> str:
    """Which thresholds :func:`decision_thresholds` uses, in words, for the line every command prints.

    ``--threshold 0.3 for every class``, ``per class from RUN/thresholds.json (recall >= 0.9 per class, tuned on the
    valid split, 2026-05-01)``, or ``0.5 for every class (the default: no thresholds.json beside model.pt)``.

    Raises:
        What :func:`decision_thresholds` raises: a bad ``threshold``, or a stale ``thresholds.json`` when no
        ``threshold`` overrides it (so a command stops before it works with thresholds it cannot use).
    """
    decision_thresholds(bundle, threshold)
    if threshold is not None:
        return f"--threshold {float(threshold):g} for every class"
    if bundle.tuned is not None:
        return bundle.tuned.describe()
    if bundle.thresholds is not None:
        return (
            "per class, stored inside model.pt by an earlier probmcl-med (move them out with "
            "`probmcl-med evaluate --tune-thresholds recall=R --save`)"
        )
    return f"{DEFAULT_THRESHOLD:g} for every class (the default: no {THRESHOLDS_FILE} beside model.pt)"


def predict_images(
    bundle: ModelBundle,
    paths: Sequence[str | Path],
    *,
    threshold: float | None = None,
    batch_size: int = 32,
    device: torch.device | str | None = "auto",
    workers: int = 0,
    uncertainty: bool = False,
    progress: ProgressHook | None = None,
    skip_bad: bool = False,
) -> Predictions:
    """Probabilities for image files, resized and normalised as the bundle's model was trained.

    Args:
        bundle: the loaded model bundle.
        paths: image files (PNG, JPEG, TIFF, ...). An unreadable one is a one-line DataError naming it, unless
            ``skip_bad``: then the others are predicted and it is listed in ``Predictions.skipped`` with its error.
        threshold: one threshold for every class; None uses the bundle's tuned thresholds (else 0.5).
        batch_size: images per forward pass.
        device: "auto" (GPU when present), "cpu", "cuda:N".
        workers: DataLoader worker processes.
        uncertainty: add the MDN's per-class (pi, var).
        progress: progress hook (:class:`ProgressHook`).
        skip_bad: skip unreadable images instead of stopping at the first.

    Raises:
        DataError: an unreadable image (without ``skip_bad``), or none readable (with it).
    """
    dev = resolve_device(device)
    thresholds = decision_thresholds(bundle, threshold)
    if uncertainty:
        require_mdn(bundle)
    items = [{"image": str(p)} for p in paths]
    if not items:
        raise DataError("no images to predict")
    dataset = ItemDataset(items, eval_transform(bundle), skip_bad=skip_bad)
    loader = prediction_batches(dataset, batch_size, workers, dev)
    # none readable: this function's message, naming the first error, not the loop's generic one
    out = run_bundle(bundle, loader, dev, uncertainty=uncertainty, progress=progress, allow_empty=True)
    done = set(out.indices.tolist())
    skipped = [{"image": str(paths[i]), "error": dataset.error_of(i)} for i in range(len(items)) if i not in done]
    if skipped and not done:
        raise DataError(f"none of the {len(items)} images could be read; the first: {skipped[0]['error']}")
    return Predictions(
        kind="images",
        ids=[{"image": str(paths[i])} for i in out.indices],
        probs=out.probs,
        thresholds=thresholds,
        class_names=list(bundle.class_names),
        pi=out.pi,
        var=out.var,
        skipped=skipped,
    )


def patch_mpp(
    bundle: ModelBundle, mpp: float | None, level: int | None, slide_mpp: float | None
) -> tuple[float | None, str | None]:
    """The microns per pixel a slide's patches are read at, and who chose it (``--mpp``, ``model.pt`` or None).

    ``mpp`` when given; else, without ``level``, the mpp the model records; else None (patches in a level's pixels).

    Raises:
        DataError: both ``mpp`` and ``level``; or ``slide_mpp`` given while no mpp is planned (it would be ignored).
    """
    if mpp is not None and level is not None:
        raise DataError("give --mpp (patches at a resolution) or --level (patches in a level's pixels), not both")
    if mpp is not None:
        return float(mpp), "--mpp"
    if level is None and bundle.mpp is not None:
        return float(bundle.mpp), "model.pt"
    if slide_mpp is not None:
        why = f"--level {level} reads" if level is not None else "this model records no mpp, so patches are read as"
        raise DataError(
            f"--slide-mpp {slide_mpp:g} would be ignored: {why} level pixels; add --mpp M to read patches at M um/px "
            "(the slide's level 0 then counts as --slide-mpp), or drop --slide-mpp"
        )
    return None, None


def predict_slide(
    bundle: ModelBundle,
    path: str | Path,
    *,
    patch_size: int | None = None,
    level: int | None = None,
    tissue_threshold: float = 0.5,
    stride: int | None = None,
    mpp: float | None = None,
    slide_mpp: float | None = None,
    mask: str | Path | None = None,
    threshold: float | None = None,
    batch_size: int = 32,
    device: torch.device | str | None = "auto",
    workers: int = 0,
    uncertainty: bool = False,
    progress: ProgressHook | None = None,
    skip_bad: bool = False,
) -> Predictions:
    """Probabilities for the tissue patches of a whole slide, read lazily through OpenSlide.

    The slide is tiled on a regular grid at ``level`` (:func:`probmcl_med.data.tiling.tile_slide`); patches whose
    tissue fraction (Otsu threshold on the saturation of a thumbnail) is below ``tissue_threshold`` are skipped.
    Each kept patch is read with ``OpenSlide.read_region`` and resized to the model's input size.

    Args:
        bundle: the loaded model bundle.
        path: the slide file.
        patch_size: patch side in pixels of ``level``, or at ``mpp`` when given (default: the model's input size).
        level: pyramid level the patches are read at, in its pixels (not with ``mpp``). Neither given: the mpp the
            model records (``bundle.mpp``), else level 0.
        tissue_threshold: minimum tissue fraction of a kept patch, in [0, 1].
        stride: grid step in pixels of the patches (default: ``patch_size``, no overlap).
        mpp: read patches at this many microns per pixel, from the level nearest above it
            (:func:`probmcl_med.data.mpp.plan_mpp`); None: the model's, else level pixels.
        slide_mpp: the slide's level-0 microns per pixel, overriding what the file declares (or standing in when it
            declares none); refused when no mpp is planned (nothing would use it).
        mask: a region file (GeoJSON polygons in level-0 pixels, or a binary image of the slide) restricting the
            patches to the tissue inside it.
        threshold, batch_size, device, workers, uncertainty, progress, skip_bad: as in :func:`predict_images`
            (a skipped patch is listed as ``{"patch": "x=X, y=Y", "error": ...}``).

    Returns:
        Predictions with ids ``{"x", "y", "level", "size", "tissue_fraction"}`` (x, y: level-0 pixels) and
        ``slide["grid"]``, the :class:`~probmcl_med.data.tiling.SlideGrid` (thumbnail and mask for heat maps);
        ``slide["status"]`` is ``"predicted"``, or :data:`NO_TISSUE` for a blank slide (no rows; ``slide
        ["tissue_mask"]`` says what the mask saw): a result a cohort counts, not an error.

    Raises:
        DataError (one line): the slide cannot be opened, the level does not exist, an implausible resolution, or
        tissue is present but no patch reaches the tissue threshold (with the hint to lower it).
    """
    if not 0.0 <= float(tissue_threshold) <= 1.0:
        raise DataError(f"--tissue-threshold {tissue_threshold}: give a fraction in [0, 1]")
    if uncertainty:
        require_mdn(bundle)
    dev = resolve_device(device)
    thresholds = decision_thresholds(bundle, threshold)
    size = int(patch_size or bundle.image_size)
    mpp, mpp_source = patch_mpp(bundle, mpp, level, slide_mpp)
    grid = tile_slide(
        path,
        size,
        level=level or 0,
        stride=stride,
        tissue_threshold=tissue_threshold,
        mpp=mpp,
        slide_mpp=slide_mpp,
        region=mask,
    )
    info = slide_info(grid, path, float(tissue_threshold), mpp_source)
    names = list(bundle.class_names)
    if grid.tissue is not None and not grid.tissue.found:  # a blank slide: a result with no patches
        none = np.zeros((0, len(names)))
        maybe = none if uncertainty else None
        return Predictions("slide", [], none, thresholds, names, maybe, maybe, {**info, "status": NO_TISSUE})
    if not grid.locations:
        where = f"at level {grid.level}" if mpp is None else f"at {mpp:g} um/px"
        raise DataError(
            f"slide {path}: none of its {grid.candidates} patches of {size} px {where} reaches the tissue "
            f"fraction {tissue_threshold:g} (tissue covers {grid.tissue.mask.mean():.1%} of the thumbnail); lower "
            "--tissue-threshold or the --patch-size"
        )
    transform = eval_transform(bundle)
    info["stain"] = fit_slide_stain(transform, grid)
    dataset = ItemDataset(grid.items(), transform, skip_bad=skip_bad)
    loader = prediction_batches(dataset, batch_size, workers, dev)
    out = run_bundle(
        bundle, loader, dev, uncertainty=uncertainty, progress=progress, description="slide patches", allow_empty=True
    )
    if not len(out.indices):
        raise DataError(f"slide {path}: none of its {len(grid.locations)} tissue patches could be read")
    done = set(out.indices.tolist())
    skipped = [
        {"patch": f"x={loc['x']}, y={loc['y']}", "error": dataset.error_of(i)}
        for i, loc in enumerate(grid.locations)
        if i not in done
    ]
    keys = ("x", "y", "level", "size", "tissue_fraction")
    ids = [{k: grid.locations[i][k] for k in keys} for i in out.indices]
    for row in ids:
        row["tissue_fraction"] = round(float(row["tissue_fraction"]), 4)
    info.update(status="predicted", patches_on_tissue=len(grid.locations))
    return Predictions("slide", ids, out.probs, thresholds, names, out.pi, out.var, info, skipped)


def fit_slide_stain(transform: Any, grid: SlideGrid) -> dict[str, Any] | None:
    """Fit the slide's stain statistics once on its grid's tissue patches and give them to the transform's stain
    step (:class:`~probmcl_med.data.stain.StainNormalized`); what meta.json records, or None without normalisation."""
    for step in getattr(transform, "transforms", []):
        if isinstance(step, StainNormalized):
            locations = [{**loc, "path": grid.path} for loc in grid.locations]
            source, used = fit_locations(locations, step.reference)
            step.sources[grid.path] = (source, used)
            return {
                "method": step.reference.method,
                "fitted_on": f"{used} tissue patches spread over the slide" if source is not None else "each patch",
                "source": None if source is None else [np.asarray(v).tolist() for v in source],
            }
    return None


NO_TISSUE = "no tissue found"
"""``Predictions.slide["status"]`` of a slide whose thumbnail holds no tissue (empty outputs, exit code 0)."""


def slide_info(grid: SlideGrid, path: str | Path, tissue_threshold: float, mpp_source: str | None) -> dict[str, Any]:
    """The slide part of meta.json: geometry, resolution, grid, the tissue mask's statistics (and the grid itself)."""
    return {
        "path": str(path),
        "dimensions": list(grid.dimensions),
        "level": grid.level,
        "level_downsample": grid.level_downsample,
        "patch_size": grid.patch_size,
        "patch_extent_level0": grid.extent,
        "mpp": None if grid.mpp_plan is None else grid.mpp_plan.to_dict(),
        "resolution": {**grid.resolution(), "mpp_source": mpp_source},
        "stride": grid.stride,
        "tissue_threshold": float(tissue_threshold),
        "tissue_mask": None if grid.tissue is None else grid.tissue.stats(),
        "patches_on_tissue": len(grid.locations),
        "patches_in_grid": grid.candidates,
        "grid": grid,
    }
