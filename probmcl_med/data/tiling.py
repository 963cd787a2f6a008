"""The patch grid of a slide for prediction: a thumbnail read with bounded memory, the tissue mask, the kept patches.

:func:`tile_slide` lists the patch locations of one slide, keeping those whose tissue fraction (by the thumbnail's
mask, :mod:`probmcl_med.data.tissue`) reaches ``tissue_threshold``. The thumbnail is built region by region
(:func:`slide_thumbnail`), so a one-level 20 000-pixel image is never decoded whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probmcl_med.data.imageio import SLIDES
from probmcl_med.data.mpp import DeclaredMpp, MppPlan, declared_mpp, plan_mpp
from probmcl_med.data.regions import region_mask
from probmcl_med.data.tissue import TissueMask, tissue_mask
from probmcl_med.errors import DataError

THUMBNAIL_READ_PIXELS = 2048 * 2048
"""Largest region read at once to build a thumbnail (16 MB of RGBA); a larger level is read in bands."""


def slide_thumbnail(slide: Any, size: int) -> np.ndarray:
    """(h, w, 3) uint8 RGB thumbnail whose longer side is at most ``size``, with bounded memory.

    OpenSlide's ``get_thumbnail`` reads the best level whole, which for a one-level 20 000-pixel image is 1.6 GB of
    RGBA. Here a level above :data:`THUMBNAIL_READ_PIXELS` is read in full-width bands of at most that many pixels
    (full width, so a stripped TIFF decodes each strip about once), each shrunk (PIL, bilinear with antialiasing)
    into its exact rows of the thumbnail; small levels go through OpenSlide's ``get_thumbnail``.
    """
    from PIL import Image

    from probmcl_med.data.imageio import rgba_to_rgb

    width, height = slide.dimensions
    scale = max(width / size, height / size, 1.0)
    tw, th = max(1, round(width / scale)), max(1, round(height / scale))
    level = slide.get_best_level_for_downsample(scale)
    lw, lh = slide.level_dimensions[level]
    ds = float(slide.level_downsamples[level])
    if lw * lh <= THUMBNAIL_READ_PIXELS and hasattr(slide, "get_thumbnail"):
        return np.asarray(slide.get_thumbnail((size, size)).convert("RGB"))
    thumb = np.zeros((th, tw, 3), dtype=np.uint8)
    fy = lh / th  # level rows per thumbnail row
    band = max(1, int(THUMBNAIL_READ_PIXELS / lw / fy))  # thumbnail rows per band
    for r0 in range(0, th, band):
        r1 = min(r0 + band, th)
        y0, y1 = round(r0 * fy), min(round(r1 * fy), lh)
        region = slide.read_region((0, round(y0 * ds)), level, (lw, max(y1 - y0, 1)))
        thumb[r0:r1] = rgba_to_rgb(np.asarray(region.resize((tw, r1 - r0), Image.Resampling.BILINEAR)))
    return thumb


MAX_GRID_PATCHES = 4_000_000
"""Most candidate patches a grid may hold (a 200 000-pixel-wide scan at a quarter-patch stride holds about 1e6): a
plan above it comes from a resolution slip, not from a real slide, and is refused before anything is read."""


def resolution_words(declared: DeclaredMpp) -> str:
    """``declares 0.499 um/px in openslide.mpp-x (from aperio.MPP)`` or ``declares none``."""
    if declared.value is None:
        return "it declares none"
    return f"it declares {declared.value:.4g} um/px in {declared.source}"


@dataclass
class SlideGrid:
    """The patch grid of one slide for prediction, with the tissue mask for heat maps.

    Attributes:
        path: the slide file.
        level: pyramid level the patches are read at.
        patch_size, stride: patch side and step, pixels of ``level`` (with an mpp plan: pixels at its mpp).
        locations: kept patches, each ``{"x", "y", "level", "size", "tissue_fraction"}`` (x, y in level-0 pixels;
            ``size``: the region read, pixels of ``level``); with an mpp plan also ``out_size`` (``patch_size``).
        mask: (h, w) bool tissue mask at thumbnail resolution.
        thumbnail: (h, w, 3) uint8 RGB thumbnail the mask was computed on.
        downsample: (sx, sy): level-0 pixels per thumbnail pixel along x and y.
        dimensions: (W, H) of level 0.
        level_downsample: level-0 pixels per pixel of ``level``.
        threshold: the saturation threshold used.
        candidates: patches in the full grid, before the tissue filter.
        mpp_plan: how patches are read at a requested mpp (:class:`MppPlan`), or None (level pixels).
        declared_mpp: the level-0 resolution the slide file declares (recorded even when patches are in level
            pixels).
        tissue: the tissue mask with its statistics (:class:`~probmcl_med.data.tissue.TissueMask`).
        read_size: side of the region read per patch, pixels of ``level``.
    """

    path: str
    level: int
    patch_size: int
    stride: int
    locations: list[dict[str, Any]]
    mask: np.ndarray
    thumbnail: np.ndarray
    downsample: tuple[float, float]
    dimensions: tuple[int, int]
    level_downsample: float
    threshold: float
    candidates: int = field(default=0)
    mpp_plan: MppPlan | None = None
    declared_mpp: DeclaredMpp = field(default_factory=lambda: DeclaredMpp(None, None))
    tissue: TissueMask | None = None
    read_size: int | None = None

    def resolution(self) -> dict[str, Any]:
        """What meta.json records about resolution: declared mpp and its source, the mpp used, the level read."""
        plan = self.mpp_plan
        return {
            "declared_mpp": self.declared_mpp.value,
            "declared_source": self.declared_mpp.source,
            "slide_mpp": None if plan is None else plan.slide_mpp,
            "slide_mpp_source": None if plan is None else plan.slide_mpp_source,
            "mpp": None if plan is None else plan.mpp,
            "level": self.level,
            "level_mpp": None if plan is None else plan.level_mpp,
            "read_size": self.read_size,
            "patch_size": self.patch_size,
        }

    def items(self) -> list[dict[str, Any]]:
        """Dataset items ``{"image": {"path", "x", "y", "level", "size", "out_size"?}, "location": index}``."""
        keys = ("x", "y", "level", "size", "out_size")
        return [
            {"image": {"path": self.path, **{k: loc[k] for k in keys if k in loc}}, "location": i}
            for i, loc in enumerate(self.locations)
        ]

    @property
    def extent(self) -> float:
        """Side of a patch in level-0 pixels."""
        return self.mpp_plan.extent if self.mpp_plan is not None else self.patch_size * self.level_downsample

    def to_thumbnail(self, x: float, y: float) -> tuple[float, float]:
        """Level-0 coordinates -> thumbnail pixel coordinates (for drawing heat maps)."""
        return x / self.downsample[0], y / self.downsample[1]


def tile_slide(
    path: str | Path,
    patch_size: int,
    level: int = 0,
    stride: int | None = None,
    tissue_threshold: float = 0.5,
    thumbnail_size: int = 1024,
    *,
    mpp: float | None = None,
    slide_mpp: float | None = None,
    region: str | Path | None = None,
) -> SlideGrid:
    """List the patch locations of a slide on a regular grid, keeping the patches that are mostly tissue.

    Args:
        path: slide file (anything OpenSlide reads, or a plain TIFF: :class:`~probmcl_med.data.plaintiff.PlainTiff`).
        patch_size: patch side in pixels of ``level``, or with ``mpp`` in pixels at ``mpp`` microns per pixel.
        level: pyramid level the patches will be read at (ignored with ``mpp``: the level comes from the mpp).
        stride: grid step in pixels of the patches (default ``patch_size``: no overlap).
        tissue_threshold: minimum fraction of tissue pixels (by the thumbnail mask) under a patch; 0 keeps all.
        thumbnail_size: the longer side of the thumbnail the mask is computed on, pixels.
        mpp: read patches at this many microns per pixel (:func:`plan_mpp`): each location then has ``size`` (the
            region side at the chosen level) and ``out_size`` (``patch_size``, what the reader resizes to).
        slide_mpp: level-0 microns per pixel when the slide does not record it (or to override it).
        region: a ``--mask`` file (GeoJSON polygons or a binary image, :func:`~probmcl_med.data.regions.region_mask`):
            only tissue inside it counts.

    Returns:
        The grid; with no tissue on the thumbnail (:attr:`SlideGrid.tissue` ``.found`` False) it has no locations,
        which is a result (a blank slide), not an error.

    Raises:
        DataError: unreadable slide, a level it lacks, a patch larger than the slide, no mpp to plan with.
    """
    path = str(path)
    slide = SLIDES.get(path)
    declared = declared_mpp(slide)
    plan = None
    if mpp is not None:
        plan = plan_mpp(slide, path, mpp, patch_size, slide_mpp)
        level = plan.level
    if not 0 <= level < slide.level_count:
        raise DataError(f"slide {path}: level {level} does not exist (the slide has levels 0..{slide.level_count - 1})")
    stride = int(stride or patch_size)
    if patch_size <= 0 or stride <= 0:
        raise DataError(f"slide {path}: patch size {patch_size} and stride {stride} must be positive")
    width, height = slide.dimensions
    ds = float(slide.level_downsamples[level])
    if plan is None:
        extent, step, read_size = patch_size * ds, stride * ds, patch_size
    else:
        extent, step, read_size = plan.extent, stride * plan.mpp / plan.slide_mpp, plan.read_size
    if extent > width + 0.5 * ds or extent > height + 0.5 * ds:
        what = f"at level {level}" if plan is None else f"at {plan.mpp:g} um/px"
        raise DataError(f"slide {path}: a {patch_size}-pixel patch {what} is larger than the slide")
    xs = np.arange(0, width - extent + 0.5 * ds, step)
    ys = np.arange(0, height - extent + 0.5 * ds, step)
    if len(xs) * len(ys) > MAX_GRID_PATCHES:
        raise DataError(
            f"slide {path}: the grid would hold {len(xs) * len(ys):.3g} candidate patches ({len(xs)} x {len(ys)}: "
            f"a {extent:.4g}-pixel patch every {step:.4g} level-0 pixels of {width} x {height}), above the "
            f"{MAX_GRID_PATCHES:.0e} limit; check the slide's mpp ({resolution_words(declared)}), or raise --stride "
            "or --patch-size"
        )
    thumb = slide_thumbnail(slide, thumbnail_size)
    th, tw = thumb.shape[:2]
    user_region = None if region is None else region_mask(region, (th, tw), (width, height))
    tissue = tissue_mask(thumb, user_region)
    mask, threshold = tissue.mask, tissue.threshold
    sx, sy = width / tw, height / th
    fractions = grid_fractions(mask, xs / sx, ys / sy, extent / sx, extent / sy)
    locations = []
    for j, i in zip(*np.nonzero(fractions >= tissue_threshold), strict=True):  # row-major: y outer, x inner
        location = {"x": round(float(xs[i])), "y": round(float(ys[j])), "level": level, "size": read_size}
        if plan is not None:
            location["out_size"] = patch_size
        location["tissue_fraction"] = float(fractions[j, i])
        locations.append(location)
    return SlideGrid(
        path=path,
        level=level,
        patch_size=patch_size,
        stride=stride,
        locations=locations,
        mask=mask,
        thumbnail=thumb,
        downsample=(sx, sy),
        dimensions=(width, height),
        level_downsample=ds,
        threshold=threshold,
        candidates=len(xs) * len(ys),
        mpp_plan=plan,
        declared_mpp=declared,
        tissue=tissue,
        read_size=read_size,
    )


def grid_fractions(mask: np.ndarray, x0: np.ndarray, y0: np.ndarray, width: float, height: float) -> np.ndarray:
    """(len(y0), len(x0)) fraction of True mask pixels under each patch of the grid, from an integral image.

    Args:
        mask: (h, w) bool.
        x0, y0: the patches' left and top edges in mask pixels (floats).
        width, height: a patch's size in mask pixels.

    A patch covers the mask pixels from ``floor(x0)`` to ``ceil(x0 + width)`` (at least one), clipped to the mask.
    """
    th, tw = mask.shape
    integral = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    c0 = np.floor(x0).astype(np.int64)
    c1 = np.minimum(np.maximum(np.ceil(x0 + width).astype(np.int64), c0 + 1), tw)
    r0 = np.floor(y0).astype(np.int64)
    r1 = np.minimum(np.maximum(np.ceil(y0 + height).astype(np.int64), r0 + 1), th)
    c0, r0 = np.minimum(c0, tw), np.minimum(r0, th)
    tissue = (
        integral[r1[:, None], c1[None, :]]
        - integral[r0[:, None], c1[None, :]]
        - integral[r1[:, None], c0[None, :]]
        + integral[r0[:, None], c0[None, :]]
    )
    area = (r1 - r0)[:, None] * (c1 - c0)[None, :]
    return np.divide(tissue, area, out=np.zeros(tissue.shape), where=area > 0)
