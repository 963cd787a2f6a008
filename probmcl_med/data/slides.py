"""The ``slides`` dataset: labelled patches of whole slides, listed in a manifest.

Manifest (``root/manifest.csv`` or ``.json``, option ``manifest``), one row per patch::

    slide,x,y,level,size,labels,split              or one 0/1 column per class instead of ``labels``
    slides/a.svs,10240,4096,0,224,tumour|stroma,train

- ``slide`` (also ``path``, ``slide_path``, ``file``): the slide file, relative to ``root`` or absolute.
- ``x``, ``y``: top-left corner in level-0 pixels (OpenSlide's convention); ``level``: pyramid level (default option
  ``level``, 0); ``size``: patch side in pixels of that level (default option ``size``, 224).
- labels as in the csv dataset (``labels`` column of ``|``-separated names, or 0/1 class columns); split column
  optional, else a seeded split; ``group_column`` (e.g. ``slide`` itself, or a patient column) keeps each group's
  patches in one split, as in the csv dataset.
A JSON manifest is a list of such objects (``labels`` may be a list of names), or ``{"patches": [...]}``.

Patches are read lazily through ``openslide.OpenSlide.read_region``; each slide is opened once per process (see
``imageio.SlideCache``). Every slide is opened and every location checked when the dataset is built, so a location
outside its slide fails at once with the manifest row, not hours into training.

Microns per pixel (option ``mpp``): ``size`` is then the patch side in pixels at that resolution and each slide is
read at its own level nearest above it (:mod:`probmcl_med.data.mpp`). The grid of a slide for prediction is
:mod:`probmcl_med.data.tiling`; its tissue mask :mod:`probmcl_med.data.tissue`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from probmcl_med.data.base import MultiLabelDataset, logger, normalize_split
from probmcl_med.data.csv_dataset import (
    check_root,
    find_column,
    labels_from_rows,
    read_groups,
    read_table,
    resolve_image_path,
    split_rows,
)
from probmcl_med.data.imageio import SLIDES, slide_location_check
from probmcl_med.data.mpp import plan_mpp
from probmcl_med.errors import DataError, EmptySplit
from probmcl_med.fileio import read_json

SLIDE_COLUMNS = ("slide", "path", "slide_path", "file", "filename")


# ---------------------------------------------------------------------------------------------------------------------
# Manifest dataset
# ---------------------------------------------------------------------------------------------------------------------


def read_manifest(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and string rows of a CSV or JSON manifest."""
    if path.suffix.lower() != ".json":
        return read_table(path)
    data = read_json(path, f"manifest {path} does not exist")
    records = data.get("patches") if isinstance(data, dict) else data
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f'{path}: a JSON manifest must be a list of patch objects or {{"patches": [...]}}')
    header: list[str] = []
    rows: list[dict[str, str]] = []
    for record in records:
        row = {}
        for key, value in record.items():
            if key not in header:
                header.append(key)
            row[key] = "|".join(map(str, value)) if isinstance(value, list) else ("" if value is None else str(value))
        rows.append(row)
    return header, rows


def _find_manifest(root: Path, name: str | None) -> Path:
    if name:
        p = Path(name)
        return p if p.is_absolute() else root / p
    for candidate in ("manifest.csv", "manifest.json"):
        if (root / candidate).is_file():
            return root / candidate
    raise DataError(f"{root}: no manifest.csv or manifest.json; set dataset.options.manifest=FILE")


def _int_cell(row: dict[str, str], column: str | None, default: int | None, path: Path, i: int) -> int:
    text = row.get(column, "") if column else ""
    if text == "":
        if default is None:
            raise DataError(f"{path}, row {i} (line {i + 2}): column '{column}' is empty")
        return int(default)
    try:
        return int(float(text))
    except ValueError:
        raise DataError(f"{path}, row {i} (line {i + 2}), column '{column}': {text!r} is not a number") from None


def load_slides(
    root: str | Path | None,
    split: str = "train",
    *,
    manifest: str | None = None,
    classes: Sequence[str] | None = None,
    labels_column: str | None = None,
    slide_column: str | None = None,
    size: int = 224,
    level: int = 0,
    split_column: str | None = None,
    group_column: str | None = None,
    seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    skip_bad: bool = False,
    mpp: float | None = None,
    slide_mpp: float | None = None,
) -> MultiLabelDataset:
    """Labelled slide patches from a manifest (layout in the module docstring).

    With ``mpp`` (microns per pixel), ``size`` is the patch side in pixels at that resolution and each slide is read
    at its own level nearest above it (:func:`plan_mpp`), so a patch covers the same tissue on every scanner;
    ``slide_mpp`` stands in for slides that do not record their resolution.
    """
    folder = check_root(root, "slides")
    path = _find_manifest(folder, manifest)
    header, rows = read_manifest(path)
    split = normalize_split(split, str(path))
    slide_col = find_column(header, slide_column, SLIDE_COLUMNS, path, "slide")
    lower = {h.lower(): h for h in header}
    for needed in ("x", "y"):
        if needed not in lower:
            raise DataError(f"{path}: no '{needed}' column (level-0 pixels); columns found: {', '.join(header)}")
    level_col, size_col = lower.get("level"), lower.get("size")
    if mpp is not None and level_col is not None:
        raise DataError(
            f"{path}: a 'level' column and dataset.options.mpp={mpp} both choose the resolution; drop the column "
            "(with mpp each slide is read at the level nearest its mpp) or the option"
        )
    split_col = lower.get((split_column or "split").lower())
    if split_column and split_col is None:
        raise DataError(f"{path}: no split column '{split_column}'; columns found: {', '.join(header)}")
    group_col, groups = read_groups(header, rows, group_column, path)
    exclude = [slide_col, lower["x"], lower["y"], *(c for c in (level_col, size_col, split_col, group_col) if c)]
    class_names, labels = labels_from_rows(
        header, rows, path, exclude=exclude, labels_column=labels_column, classes=classes
    )
    chosen = split_rows(rows, split, path, split_col, groups, seed, valid_fraction, test_fraction)
    items: list[dict[str, Any]] = []
    bad: list[str] = []
    for i in chosen:
        row = rows[i]
        location = {
            "path": resolve_image_path(row[slide_col], folder),
            "x": _int_cell(row, lower["x"], None, path, i),
            "y": _int_cell(row, lower["y"], None, path, i),
            "level": _int_cell(row, level_col, level, path, i),
            "size": _int_cell(row, size_col, size, path, i),
        }
        try:
            slide = SLIDES.get(location["path"])
            if mpp is not None:
                plan = plan_mpp(slide, location["path"], mpp, location["size"], slide_mpp)
                location.update(level=plan.level, size=plan.read_size, out_size=plan.size)
            slide_location_check(
                slide,
                location["path"],
                location["x"],
                location["y"],
                location["level"],
                location["size"],
                location["size"],
            )
        except DataError as err:
            message = f"{path}, row {i} (line {i + 2}): {err}"
            if not skip_bad:
                raise DataError(message) from None
            bad.append(message)
            continue
        items.append({"image": location, "label": labels[i], "row": i})
        if groups is not None:
            items[-1]["group"] = groups[i]
    if not chosen:
        raise EmptySplit(f"{path}: the split '{split}' has no rows ({len(rows)} rows in the manifest)")
    if not items:
        raise DataError(f"{path}: the split '{split}' has no usable patches ({len(bad)} bad, {len(rows)} rows)")
    dataset = MultiLabelDataset(items, class_names, name="slides", source=path, skip_bad=skip_bad, check_files=False)
    for message in bad:
        logger.warning("skipping %s", message)
    dataset.num_skipped += len(bad)
    dataset.skipped.extend(bad)
    return dataset
