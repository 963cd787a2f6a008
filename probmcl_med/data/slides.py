"""Whole slides: labelled patches from a manifest, and a tissue-masked grid of patch locations for prediction.

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

The grid tiler :func:`tile_slide` lists the patch locations of one slide for prediction, keeping those whose tissue
fraction (Otsu threshold on the saturation of a low-resolution thumbnail) reaches ``tissue_threshold``. The thumbnail
is built region by region (:func:`slide_thumbnail`), so a one-level 20 000-pixel image is never decoded whole.

Microns per pixel (option ``mpp``, ``predict --mpp``): slides from different scanners differ in level-0 resolution,
so a patch of N level-0 pixels covers different tissue on each. With ``mpp`` a patch is N pixels *at that many
microns per pixel*: the slide's own resolution comes from OpenSlide's ``openslide.mpp-x``/``-y`` (or ``slide_mpp``
when the file has none), the region is read at the coarsest level still at least as fine as ``mpp`` and resized
(:func:`plan_mpp`, :class:`MppPlan`; the location then carries ``out_size``). 224 px at 0.5 um/px covers 112 um.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from torch.utils.data import Dataset

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
from probmcl_med.errors import ConfigError, DataError, EmptySplit
from probmcl_med.fileio import atomic_write

SLIDE_COLUMNS = ("slide", "path", "slide_path", "file", "filename")
MIN_SATURATION = 0.05
"""Lower bound of the tissue threshold: on a slide that is all background Otsu would split the noise."""


# ---------------------------------------------------------------------------------------------------------------------
# Manifest dataset
# ---------------------------------------------------------------------------------------------------------------------


def read_manifest(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and string rows of a CSV or JSON manifest."""
    if path.suffix.lower() != ".json":
        return read_table(path)
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
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


# ---------------------------------------------------------------------------------------------------------------------
# Tissue mask and grid tiler
# ---------------------------------------------------------------------------------------------------------------------


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` in [0, 1]: the cut maximising the between-class variance (Otsu 1979).

    Computed from a ``bins``-bin histogram: for each cut t, w0(t) mu0(t) and w1(t) mu1(t) from cumulative sums, and
    sigma_b^2(t) = w0 w1 (mu0 - mu1)^2. Returns the upper edge of the best bin.
    """
    hist, edges = np.histogram(np.clip(values, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max of an (H, W, 3) uint8 image, in [0, 1] (0 where max is 0)."""
    rgb = rgb.astype(np.float32)
    hi, lo = rgb.max(axis=2), rgb.min(axis=2)
    return np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)


def tissue_mask(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """Tissue (True) vs background of a thumbnail: saturation above max(Otsu threshold, MIN_SATURATION).

    H&E-stained tissue is coloured (pink/purple) and glass is white or grey, so saturation separates them better than
    brightness does (pale fat and white glass have the same brightness).
    """
    sat = saturation(rgb)
    threshold = max(otsu_threshold(sat), MIN_SATURATION)
    return sat > threshold, threshold


# ---------------------------------------------------------------------------------------------------------------------
# Microns per pixel
# ---------------------------------------------------------------------------------------------------------------------


def level0_mpp(slide: Any, path: str | Path, override: float | None = None) -> float:
    """Microns per pixel of level 0: ``override`` when given, else OpenSlide's ``openslide.mpp-x``/``-y`` (mean).

    Raises:
        DataError: the slide records no resolution and no override is given, or a value is not positive.
    """
    if override is not None:
        if not float(override) > 0:
            raise DataError(
                f"slide {path}: the level-0 mpp {override} (predict --slide-mpp, dataset.options.slide_mpp) must be a "
                "positive number of microns per pixel"
            )
        return float(override)
    props = getattr(slide, "properties", {}) or {}
    values = []
    for key in ("openslide.mpp-x", "openslide.mpp-y"):
        try:
            values.append(float(props[key]))
        except (KeyError, TypeError, ValueError):
            continue
    values = [v for v in values if v > 0]
    if not values:
        raise DataError(
            f"slide {path} records no microns per pixel (no openslide.mpp-x property); give the scan's resolution "
            "with predict --slide-mpp, or dataset.options.slide_mpp in training, e.g. 0.25 for 40x or 0.5 for 20x"
        )
    return float(np.mean(values))


@dataclass(frozen=True)
class MppPlan:
    """How patches of ``size`` pixels at ``mpp`` microns per pixel are read from one slide.

    Attributes:
        mpp: requested microns per pixel of the patches.
        slide_mpp: microns per pixel of the slide's level 0.
        level: the pyramid level read: the coarsest whose resolution is at least the requested one (its mpp at most
            ``mpp``), level 0 when even level 0 is coarser (then patches are upsampled).
        level_mpp: microns per pixel of ``level``.
        size: patch side at ``mpp``, pixels (what the reader returns).
        read_size: side of the region read at ``level``, ``round(size * mpp / level_mpp)`` pixels.
    """

    mpp: float
    slide_mpp: float
    level: int
    level_mpp: float
    size: int
    read_size: int

    @property
    def extent(self) -> float:
        """Side of the region read, in level-0 pixels (``read_size`` times the level's downsample)."""
        return self.read_size * self.level_mpp / self.slide_mpp

    def to_dict(self) -> dict[str, Any]:
        return {"mpp": self.mpp, "slide_mpp": self.slide_mpp, "level": self.level, "level_mpp": self.level_mpp,
                "size": self.size, "read_size": self.read_size}  # fmt: skip


def plan_mpp(slide: Any, path: str | Path, mpp: float, size: int, slide_mpp_override: float | None = None) -> MppPlan:
    """Choose the level and region size that give ``size``-pixel patches at ``mpp`` microns per pixel (MppPlan).

    A level's mpp is ``slide_mpp * level_downsample``; a level within 0.1 % of the request counts as reaching it (so
    a 0.2500 and a 0.2502 um/px scan read the same level).
    """
    if not float(mpp) > 0:
        raise DataError(f"slide {path}: mpp {mpp} must be a positive number of microns per pixel")
    base = level0_mpp(slide, path, slide_mpp_override)
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
    return MppPlan(float(mpp), base, level, level_mpp, int(size), int(read_size))


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


# ---------------------------------------------------------------------------------------------------------------------
# Thumbnails without decoding a whole level
# ---------------------------------------------------------------------------------------------------------------------

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

    Raises:
        DataError: unreadable slide, a level it lacks, a patch larger than the slide, no mpp to plan with.
    """
    path = str(path)
    slide = SLIDES.get(path)
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
    thumb = slide_thumbnail(slide, thumbnail_size)
    mask, threshold = tissue_mask(thumb)
    th, tw = mask.shape
    sx, sy = width / tw, height / th
    integral = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    xs = np.arange(0, width - extent + 0.5 * ds, step)
    ys = np.arange(0, height - extent + 0.5 * ds, step)
    locations = []
    for y in ys:
        for x in xs:
            x0, x1 = int(np.floor(x / sx)), max(int(np.ceil((x + extent) / sx)), int(np.floor(x / sx)) + 1)
            y0, y1 = int(np.floor(y / sy)), max(int(np.ceil((y + extent) / sy)), int(np.floor(y / sy)) + 1)
            x1, y1 = min(x1, tw), min(y1, th)
            area = (x1 - x0) * (y1 - y0)
            tissue = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
            fraction = float(tissue / area) if area > 0 else 0.0
            if fraction >= tissue_threshold:
                location = {"x": round(float(x)), "y": round(float(y)), "level": level, "size": read_size}
                if plan is not None:
                    location["out_size"] = patch_size
                location["tissue_fraction"] = fraction
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
    )


class SlidePatches(Dataset):
    """The patches of a :class:`SlideGrid` as a Dataset for prediction: ``transform({"image": location, ...})``.

    Items carry no label; use a transform from ``build_eval_transform`` (it passes items without labels through).
    """

    def __init__(self, grid: SlideGrid, transform: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.grid = grid
        self.items = grid.items()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        item = dict(self.items[index])
        return self.transform(item) if self.transform is not None else item


def write_pyramidal_tiff(
    path: str | Path,
    image: np.ndarray,
    levels: int = 3,
    tile: int = 256,
    compression: str | None = None,
    mpp: float | None = 0.5,
) -> Path:
    """Write an RGB image as a tiled pyramidal TIFF that OpenSlide opens (its "generic-tiff" format).

    What OpenSlide needs, checked against openslide-bin 4.0: tiled pages (an untiled TIFF is rejected as
    unsupported), one page per level, the reduced levels marked ``subfiletype=1`` (without it only level 0 is seen);
    the resolution tags are optional (they give ``openslide.mpp-x``). Uncompressed, deflate and JPEG tiles all read
    (JPEG needs imagecodecs to write). Level ``k`` is ``image[::2**k, ::2**k]`` (a plain decimation, so tests can
    compare pixels exactly).

    Args:
        path: output file (written atomically).
        image: (H, W, 3) uint8.
        levels: number of pyramid levels.
        tile: tile side, pixels (a multiple of 16).
        compression: None, "zlib" or "jpeg".
        mpp: microns per pixel of level 0 (None: no resolution tags).
    """

    def write(handle: Any) -> None:
        buffer = io.BytesIO()  # tifffile wants a named file or a seekable buffer; the fd of atomic_write has no name
        with tifffile.TiffWriter(buffer) as tw:
            for k in range(levels):
                extra: dict[str, Any] = {"subfiletype": 1 if k else 0}
                if mpp is not None:
                    extra.update(resolution=(1e4 / (mpp * 2**k),) * 2, resolutionunit="CENTIMETER")
                level_image = np.ascontiguousarray(image[:: 2**k, :: 2**k])
                tw.write(
                    level_image, tile=(tile, tile), photometric="rgb", compression=compression, metadata=None, **extra
                )
        handle.write(buffer.getbuffer())

    return atomic_write(path, write)
