"""QuPath annotations in: classified polygons of a slide become labelled patches of a ``slides`` dataset manifest.

A pathologist draws regions in QuPath, classifies them, and exports them (File > Export objects as GeoJSON; a
``FeatureCollection`` in level-0 pixel coordinates, :mod:`probmcl_med.data.regions`). :func:`annotation_patches`
lays a grid of ``patch_size``-pixel patches at ``mpp`` microns per pixel over the annotated area and gives each patch
the classes whose regions cover at least ``min_coverage`` of it (so overlapping regions of two classes make a
patch with two labels); a patch that no class covers enough is left out.

**Classes.** QuPath writes a class as ``{"name": "Tumor", "color": [r, g, b]}``; a *derived* class (a sub-class
of a parent, e.g. an intensity or a subtype) as ``{"names": ["Tumor", "Positive"], ...}`` (QuPath 0.4 and later)
or ``{"name": "Tumor: Positive"}`` (older versions): one class, ``Positive`` under ``Tumor``, never the two labels
``Tumor`` and ``Positive``. ``derived="full"`` (the default) keeps it as one label named as QuPath displays it,
``Tumor: Positive``; ``derived="parent"`` maps it to its top-level class ``Tumor`` (when the sub-classes are not
what the model should learn). Unclassified regions and objects that are not annotations (detections, cells,
tiles) are ignored and counted.

**Coverage** is measured on a sub-grid of :data:`COVERAGE_SAMPLES` x :data:`COVERAGE_SAMPLES` points per patch
(PIL's polygon fill of each class's regions, holes cut out), so it is exact to about 1 / COVERAGE_SAMPLES of the
patch side along region edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probmcl_med.data.imageio import SLIDES
from probmcl_med.data.mpp import MppPlan, plan_mpp
from probmcl_med.data.regions import Region, rasterize, read_features
from probmcl_med.errors import DataError

COVERAGE_SAMPLES = 16
DERIVED_MODES = ("full", "parent")
SKIPPED_OBJECT_TYPES = ("detection", "cell", "tile", "tma_core")


def qupath_class(properties: dict[str, Any], derived: str = "full") -> str | None:
    """The label of a QuPath feature's classification, or None when it has none (rules in the module docstring)."""
    classification = properties.get("classification")
    if not isinstance(classification, dict):
        return None
    names = classification.get("names")
    if isinstance(names, list) and names:
        parts = [str(n) for n in names]
    elif classification.get("name"):
        parts = [p.strip() for p in str(classification["name"]).split(":")]
    else:
        return None
    return parts[0] if derived == "parent" else ": ".join(parts)


@dataclass
class AnnotatedSlide:
    """The labelled patches of one slide.

    Attributes:
        path: the slide.
        plan: how a patch is read (level, region size) at the requested mpp.
        rows: per patch ``{"x", "y", "labels": [...], "coverage": {class: fraction}}`` (x, y in level-0 pixels).
        regions: classified annotation regions used, per class.
        ignored: features left out, by reason (``unclassified``, ``not an annotation: detection``, ...).
    """

    path: str
    plan: MppPlan
    rows: list[dict[str, Any]]
    regions: dict[str, int]
    ignored: dict[str, int] = field(default_factory=dict)


def classified_regions(features: Sequence[Region], derived: str) -> tuple[dict[str, list], dict[str, int]]:
    """Polygons per class of the annotation features, and the count of features ignored per reason."""
    if derived not in DERIVED_MODES:
        raise DataError(f"--derived {derived!r}: use full or parent")
    per_class: dict[str, list] = {}
    ignored: dict[str, int] = {}
    for feature in features:
        kind = str(feature.properties.get("objectType", "annotation")).lower()
        name = qupath_class(feature.properties, derived)
        reason = f"not an annotation: {kind}" if kind in SKIPPED_OBJECT_TYPES else None if name else "unclassified"
        if reason is not None:
            ignored[reason] = ignored.get(reason, 0) + 1
            continue
        if "|" in str(name):
            raise DataError(f"feature {feature.index}: class {name!r} holds '|', the manifest's label separator")
        per_class.setdefault(str(name), []).extend(feature.polygons)
    return per_class, ignored


def annotation_patches(
    slide: str | Path,
    annotations: str | Path,
    mpp: float,
    patch_size: int,
    min_coverage: float = 0.5,
    derived: str = "full",
    slide_mpp: float | None = None,
) -> AnnotatedSlide:
    """Labelled patches of ``slide`` from its QuPath GeoJSON ``annotations`` (module docstring).

    The grid starts at the slide's origin with a step of one patch (``patch_size`` pixels at ``mpp``), covers the
    annotations' bounding box and keeps patches that lie inside the slide.

    Raises:
        DataError: unreadable slide or GeoJSON, no classified annotation, a coverage outside (0, 1], an implausible
            resolution (:func:`~probmcl_med.data.mpp.plan_mpp`).
    """
    if not 0.0 < float(min_coverage) <= 1.0:
        raise DataError(f"--min-coverage {min_coverage}: give a fraction in (0, 1]")
    path = str(slide)
    handle = SLIDES.get(path)
    plan = plan_mpp(handle, path, mpp, patch_size, slide_mpp)
    per_class, ignored = classified_regions(read_features(annotations), derived)
    if not per_class:
        raise DataError(f"{annotations}: no classified annotation (polygons with a classification) for slide {path}")
    width, height = handle.dimensions
    extent = plan.extent
    points = np.array([pt for polygons in per_class.values() for poly in polygons for pt in poly[0]])
    x0, y0 = np.floor(points.min(axis=0) / extent) * extent
    nx = max(0, min(int(np.ceil((points[:, 0].max() - x0) / extent)), int((width - x0) // extent)))
    ny = max(0, min(int(np.ceil((points[:, 1].max() - y0) / extent)), int((height - y0) // extent)))
    n = COVERAGE_SAMPLES
    coverage = {}
    for name, polygons in sorted(per_class.items()):
        shifted = [[[(x - x0, y - y0) for x, y in ring] for ring in poly] for poly in polygons]
        grid = rasterize(shifted, (ny * n, nx * n), (extent / n, extent / n))
        coverage[name] = grid.reshape(ny, n, nx, n).mean(axis=(1, 3)) if nx and ny else np.zeros((ny, nx))
    rows = []
    for j in range(ny):
        for i in range(nx):
            cover = {name: float(c[j, i]) for name, c in coverage.items()}
            labels = [name for name, value in cover.items() if value >= min_coverage]
            if labels:
                x, y = round(x0 + i * extent), round(y0 + j * extent)
                rows.append({"x": x, "y": y, "labels": labels, "coverage": cover})
    return AnnotatedSlide(path, plan, rows, {k: len(v) for k, v in per_class.items()}, ignored)


DATASET_MARKER = ".probmcl-med-annotations"
"""The manifest inside every folder ``data from-annotations`` writes (:func:`probmcl_med.fileio.atomic_directory`):
such a folder may be replaced by the next run."""


def write_annotation_dataset(
    out_dir: str | Path, slides: Sequence[AnnotatedSlide], settings: dict[str, Any], overwrite: bool = False
) -> Path:
    """Write a slides-dataset folder, whole or not at all: ``manifest.csv`` and ``annotations.json``.

    ``manifest.csv`` has ``slide`` (absolute path), ``x``, ``y`` (level-0 pixels), ``level`` and ``size`` (the
    region read, pixels of that level: ``patch_size`` pixels at ``mpp`` come from the level nearest above it) and
    ``labels`` (``|``-separated), the layout ``train --dataset slides --root DIR`` reads with no options;
    ``annotations.json`` records the settings, the classes with their patch counts and each slide's plan and
    ignored features.

    ``overwrite``: a folder holding files this command did not write is written into (only its own files replaced).

    Raises:
        DataError: no patch on any slide, or (without ``overwrite``) ``out_dir`` holds files this command did not
            write.
    """
    import csv
    import io
    import json

    from probmcl_med.fileio import atomic_directory, check_replaceable_folder

    out_dir = Path(out_dir)
    check_replaceable_folder(out_dir, DATASET_MARKER, "dataset", "--out", overwrite)
    total = sum(len(s.rows) for s in slides)
    if not total:
        raise DataError(
            f"no patch of {settings.get('patch_size')} px at {settings.get('mpp')} um/px is covered by a class for "
            f"at least {settings.get('min_coverage')} of it; lower --min-coverage or --patch-size"
        )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["slide", "x", "y", "level", "size", "labels"])
    counts: dict[str, int] = {}
    for s in slides:
        for row in s.rows:
            writer.writerow([str(Path(s.path).resolve()), row["x"], row["y"], s.plan.level, s.plan.read_size,
                             "|".join(row["labels"])])  # fmt: skip
            for name in row["labels"]:
                counts[name] = counts.get(name, 0) + 1
    summary = {
        **settings,
        "patches": total,
        "classes": dict(sorted(counts.items())),
        "slides": [
            {
                "slide": s.path,
                "patches": len(s.rows),
                "plan": s.plan.to_dict(),
                "regions": s.regions,
                "ignored": s.ignored,
            }
            for s in slides
        ],
    }
    written_by = "probmcl-med data from-annotations"
    with atomic_directory(out_dir, DATASET_MARKER, overwrite=overwrite, what="dataset", written_by=written_by) as tmp:
        (tmp / "manifest.csv").write_text(buffer.getvalue())
        (tmp / "annotations.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out_dir
