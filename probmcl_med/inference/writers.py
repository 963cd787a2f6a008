"""Writing predictions: a folder of CSVs (and, for a slide, a heat map per class), whole or not at all.

Every folder written here holds :data:`OUTPUT_MARKER`, the manifest of what it wrote, so the next run to the same
path may replace it; a folder holding anything else is refused without ``--overwrite`` (:func:`check_output_folder`,
:mod:`probmcl_med.fileio`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from probmcl_med.fileio import atomic_directory, check_replaceable_folder
from probmcl_med.inference.geojson import geojson_text, patch_features
from probmcl_med.inference.heatmaps import write_heatmaps
from probmcl_med.inference.loop import UNCERTAINTY_EVIDENCE
from probmcl_med.inference.predict import Predictions

SLIDE_ID_COLUMNS = ("x", "y", "level", "size", "tissue_fraction")
"""The id columns of patches.csv (also written, with no rows, for a slide with no tissue)."""

OUTPUT_MARKER = ".probmcl-med-output"
"""File inside every predict/explain output folder: such a folder may be replaced by the next run to the same path."""


def safe_filename(name: str, taken: set[str] | None = None) -> str:
    """A file-name-safe version of a class name (letters, digits, ``._-``), unique within ``taken`` (updated)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "class"
    candidate, i = base, 2
    while taken is not None and candidate.lower() in taken:
        candidate, i = f"{base}_{i}", i + 1
    if taken is not None:
        taken.add(candidate.lower())
    return candidate


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _num(x: float) -> str:
    return f"{x:.8g}"


def check_output_folder(out_dir: Path, overwrite: bool = False) -> None:
    """Refuse a folder at ``out_dir`` holding files that are not an earlier output's, unless ``overwrite``
    (:func:`probmcl_med.fileio.check_replaceable_folder`)."""
    check_replaceable_folder(out_dir, OUTPUT_MARKER, "output", "--out", overwrite)


def write_predictions(
    out_dir: str | Path,
    predictions: Predictions,
    meta: dict[str, Any] | None = None,
    extra_files: Callable[[Path], None] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a prediction folder, whole or not at all (built under a temporary name, then renamed).

    Files for images: ``predictions.csv`` (``image`` + one probability column per class; readable by
    ``probmcl-med evaluate --scores``), ``labels.csv`` (``image,labels`` with ``|``-separated predicted classes,
    the labels style of the csv dataset). For a slide: ``patches.csv`` (``x, y, level, size`` in OpenSlide's
    convention, x/y in level-0 pixels and size in pixels of ``level``, then the probabilities and ``labels``).
    With uncertainty: ``uncertainty.csv`` (the id columns, then ``pi_<class>`` and ``var_<class>`` per class).
    When the model keeps the training features' statistics: ``ood.csv`` (the id columns, ``ood_distance``,
    ``ood_percentile`` among the calibration split, ``out_of_distribution`` 0/1) and ``meta.json``'s ``ood``
    summary (:mod:`probmcl_med.core.ood`).
    A slide also gets ``thumbnail.png``, ``heatmaps/<class>.png`` (:func:`~probmcl_med.inference.heatmaps.
    write_heatmaps`: the probability in a colour map apart from H&E, the called patches outlined, a legend) and
    ``predictions.geojson``, one polygon per patch in level-0 pixels for QuPath (:mod:`.geojson`). Always:
    ``meta.json`` (checkpoint, thresholds, classes, date, the slide grid, the inputs ``--skip-bad`` skipped, ...).
    ``extra_files(tmp_dir)`` adds more.

    ``overwrite``: write into a folder holding files this package did not write (only its own files replaced).

    Raises:
        DataError: ``out_dir`` is a file, or (without ``overwrite``) a folder holding files of anyone else.
    """
    out_dir = Path(out_dir)
    check_output_folder(out_dir, overwrite)
    p = predictions
    id_cols = list(p.ids[0]) if p.ids else (["image"] if p.kind == "images" else list(SLIDE_ID_COLUMNS))
    id_rows = [[row[c] for c in id_cols] for row in p.ids]
    prob_rows = [[_num(v) for v in probs] for probs in p.probs]
    document = {
        **(meta or {}),
        **({"slide": {k: v for k, v in p.slide.items() if k != "grid"}} if p.slide else {}),
        "kind": p.kind,
        "num_inputs": len(p.ids),
        "class_names": p.class_names,
        "thresholds": [float(t) for t in p.thresholds],
        "threshold_rule": "score >= threshold",
        **({"skipped": p.skipped} if p.skipped else {}),
        "ood": p.ood_summary,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    written_by = "probmcl_med.inference.writers.write_predictions"
    with atomic_directory(out_dir, OUTPUT_MARKER, overwrite=overwrite, written_by=written_by) as tmp:
        if p.kind == "images":
            (tmp / "predictions.csv").write_text(
                _csv_text(id_cols + p.class_names, [a + b for a, b in zip(id_rows, prob_rows, strict=True)])
            )
            (tmp / "labels.csv").write_text(
                _csv_text([*id_cols, "labels"], [[*a, b] for a, b in zip(id_rows, p.labels(), strict=True)])
            )
        else:
            (tmp / "patches.csv").write_text(
                _csv_text(
                    [*id_cols, *p.class_names, "labels"],
                    [[*a, *b, c] for a, b, c in zip(id_rows, prob_rows, p.labels(), strict=True)],
                )
            )
        if p.pi is not None and p.var is not None:
            header = id_cols + [f"pi_{c}" for c in p.class_names] + [f"var_{c}" for c in p.class_names]
            rows = [
                a + [_num(v) for v in pi] + [_num(v) for v in var]
                for a, pi, var in zip(id_rows, p.pi, p.var, strict=True)
            ]
            (tmp / "uncertainty.csv").write_text(_csv_text(header, rows))
            document["uncertainty"] = (
                "pi_k and var_k of the stage-1 MDN's class-k component for the encoder features, not a calibrated "
                f"probability; {UNCERTAINTY_EVIDENCE}"
            )
        if p.ood is not None:
            header = [*id_cols, "ood_distance", "ood_percentile", "out_of_distribution"]
            rows = [
                [*a, _num(d), f"{q:.2f}", int(f)]
                for a, d, q, f in zip(id_rows, p.ood.distance, p.ood.percentile, p.ood.flagged, strict=True)
            ]
            (tmp / "ood.csv").write_text(_csv_text(header, rows))
        if p.kind == "slide" and p.slide is not None:
            taken: set[str] = set()
            write_heatmaps(tmp, p, [f"{safe_filename(name, taken)}.png" for name in p.class_names])
            extent = float(p.slide["grid"].extent)
            collection = patch_features(p.ids, p.probs, p.predicted, p.class_names, extent)
            (tmp / "predictions.geojson").write_text(geojson_text(collection))
        if extra_files is not None:
            extra_files(tmp)
        (tmp / "meta.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    return out_dir
