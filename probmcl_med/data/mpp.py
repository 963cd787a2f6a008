"""Microns per pixel: a slide's level-0 resolution, and the plan that reads patches of N pixels at a requested mpp.

Slides from different scanners differ in level-0 resolution, so a patch of N level-0 pixels covers different tissue
on each. With ``mpp`` a patch is N pixels *at that many microns per pixel*: the slide's own resolution comes from
OpenSlide's ``openslide.mpp-x``/``-y`` (or ``slide_mpp`` when the file has none), the region is read at the coarsest
level still at least as fine as ``mpp`` and resized (:func:`plan_mpp`, :class:`MppPlan`; the location then carries
``out_size``). 224 px at 0.5 um/px covers 112 um.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probmcl_med.errors import ConfigError, DataError

logger = logging.getLogger("probmcl_med.data")

PLAUSIBLE_MPP = (0.05, 20.0)
"""Level-0 microns per pixel that a slide may declare: from a 200x oil objective (about 0.05) to a 0.5x overview
scan (about 20). A value outside is a unit slip (a TIFF resolution of 28.35 px per *inch* read as per centimetre, a
scanner writing the magnification in the mpp field) and is refused before any patch is planned."""


@dataclass(frozen=True)
class DeclaredMpp:
    """What the slide file says about its level-0 resolution.

    Attributes:
        value: microns per pixel (mean of x and y), or None when the file records none.
        source: the property it came from (``openslide.mpp-x``, with the vendor or TIFF field OpenSlide derived it
            from when the slide names one), or None.
    """

    value: float | None
    source: str | None

    @property
    def plausible(self) -> bool:
        """True when the value lies in :data:`PLAUSIBLE_MPP`."""
        return self.value is not None and PLAUSIBLE_MPP[0] <= self.value <= PLAUSIBLE_MPP[1]


_MPP_ORIGINS = (
    ("aperio.MPP", "aperio.MPP"),
    ("hamamatsu.XResolution", "hamamatsu.XResolution"),
    ("dicom.PixelSpacing", "DICOM PixelSpacing"),
    ("ome.PhysicalSizeX", "the OME-XML PhysicalSizeX"),
    ("tiff.XResolution", "the TIFF resolution tag"),
)


def declared_mpp(slide: Any) -> DeclaredMpp:
    """The level-0 mpp a slide declares (OpenSlide's ``openslide.mpp-x``/``-y``, their mean), and where it came from."""
    props = getattr(slide, "properties", {}) or {}
    values = []
    for key in ("openslide.mpp-x", "openslide.mpp-y"):
        try:
            values.append(float(props[key]))
        except (KeyError, TypeError, ValueError):
            continue
    values = [v for v in values if v > 0]
    if not values:
        return DeclaredMpp(None, None)
    origin = next((words for key, words in _MPP_ORIGINS if any(k.startswith(key) for k in props)), None)
    if origin == "the TIFF resolution tag":
        unit = props.get("tiff.ResolutionUnit", "")
        try:
            per = f"{float(props.get('tiff.XResolution', 'nan')):g}"
        except ValueError:
            per = str(props.get("tiff.XResolution"))
        origin = f"the TIFF resolution tag, {per} px per {unit or 'unit'}"
    source = "openslide.mpp-x" + (f" (from {origin})" if origin else "")
    return DeclaredMpp(float(np.mean(values)), source)


def _check_plausible(value: float, path: str | Path, what: str) -> None:
    lo, hi = PLAUSIBLE_MPP
    if not lo <= value <= hi:
        raise DataError(
            f"slide {path}: {what} is {value:.3g} um/px, outside the plausible {lo:g}-{hi:g} um/px (a unit slip?); "
            "give the scan's real level-0 resolution with predict --slide-mpp (dataset.options.slide_mpp in training), e.g. "
            "0.25 for 40x or 0.5 for 20x"
        )


def level0_mpp(slide: Any, path: str | Path, override: float | None = None) -> tuple[float, str]:
    """Microns per pixel of level 0 and where it came from: ``override`` when given, else what the slide declares.

    Returns:
        (mpp, source): source is ``"--slide-mpp"`` or the declared property (:func:`declared_mpp`).

    Raises:
        DataError: no override and the slide records no resolution, or the value used lies outside
            :data:`PLAUSIBLE_MPP` (one line naming the value, its source and ``--slide-mpp``).
    """
    if override is not None:
        if not float(override) > 0:
            raise DataError(
                f"slide {path}: the level-0 mpp {override} (predict --slide-mpp, dataset.options.slide_mpp) must be a "
                "positive number of microns per pixel"
            )
        _check_plausible(float(override), path, "predict --slide-mpp (dataset.options.slide_mpp)")
        return float(override), "--slide-mpp"
    declared = declared_mpp(slide)
    if declared.value is None:
        raise DataError(
            f"slide {path} records no microns per pixel (no openslide.mpp-x property); give the scan's resolution "
            "with predict --slide-mpp, or dataset.options.slide_mpp in training, e.g. 0.25 for 40x or 0.5 for 20x"
        )
    _check_plausible(declared.value, path, f"the level-0 resolution it declares in {declared.source}")
    return declared.value, str(declared.source)


@dataclass(frozen=True)
class MppPlan:
    """How patches of ``size`` pixels at ``mpp`` microns per pixel are read from one slide.

    Attributes:
        mpp: requested microns per pixel of the patches.
        slide_mpp: microns per pixel of the slide's level 0.
        slide_mpp_source: where ``slide_mpp`` came from (``--slide-mpp`` or the slide's property).
        level: the pyramid level read: the coarsest whose resolution is at least the requested one (its mpp at most
            ``mpp``), level 0 when even level 0 is coarser (then patches are upsampled).
        level_mpp: microns per pixel of ``level``.
        size: patch side at ``mpp``, pixels (what the reader returns).
        read_size: side of the region read at ``level``, ``round(size * mpp / level_mpp)`` pixels.
    """

    mpp: float
    slide_mpp: float
    slide_mpp_source: str
    level: int
    level_mpp: float
    size: int
    read_size: int

    @property
    def extent(self) -> float:
        """Side of the region read, in level-0 pixels (``read_size`` times the level's downsample)."""
        return self.read_size * self.level_mpp / self.slide_mpp

    def to_dict(self) -> dict[str, Any]:
        return {"mpp": self.mpp, "slide_mpp": self.slide_mpp, "slide_mpp_source": self.slide_mpp_source,
                "level": self.level, "level_mpp": self.level_mpp, "size": self.size, "read_size": self.read_size}  # fmt: skip


def plan_mpp(slide: Any, path: str | Path, mpp: float, size: int, slide_mpp_override: float | None = None) -> MppPlan:
    """Choose the level and region size that give ``size``-pixel patches at ``mpp`` microns per pixel (MppPlan).

    A level's mpp is ``slide_mpp * level_downsample``; a level within 0.1 % of the request counts as reaching it (so
    a 0.2500 and a 0.2502 um/px scan read the same level).
    """
    if not float(mpp) > 0:
        raise DataError(f"slide {path}: mpp {mpp} must be a positive number of microns per pixel")
    base, source = level0_mpp(slide, path, slide_mpp_override)
    level = 0
    for k, ds in enumerate(slide.level_downsamples):
        if base * float(ds) <= float(mpp) * 1.001:
            level = k
    level_mpp = base * float(slide.level_downsamples[level])
    read_size = max(1, round(size * float(mpp) / level_mpp))
    if level_mpp > float(mpp) * 1.001:
        logger.warning(
            "slide %s: scanned at %.4g um/px, coarser than the requested %.4g um/px; patches are upsampled",
            path, base, mpp,
        )  # fmt: skip
    return MppPlan(float(mpp), base, source, level, level_mpp, int(size), int(read_size))


def input_mpp(dataset: str, options: Mapping[str, Any], image_size: int, declared: float | None) -> float | None:
    """Microns per pixel of the network input, as recorded in model.pt (``predict`` reads slides at it).

    The ``slides`` dataset with ``options.mpp`` reads ``options.size``-pixel patches at that mpp and the transform
    resizes them to ``image_size``: the input mpp is ``mpp * size / image_size``. Any other dataset: ``declared``
    (the config's ``dataset.mpp``), or None.

    Raises:
        ConfigError: ``dataset.mpp`` contradicts what the slides options give.
    """
    if dataset != "slides" or options.get("mpp") is None:
        return None if declared is None else float(declared)
    derived = float(options["mpp"]) * float(options.get("size", 224)) / float(image_size)
    if declared is not None and abs(float(declared) - derived) > 1e-3 * derived:
        raise ConfigError(
            f"dataset.mpp={declared} but the slides options give {derived:g} um/px at the network input "
            f"(options.mpp * options.size / image_size); drop dataset.mpp or make them agree"
        )
    return derived
