"""The slides of a cohort: from folders, globs and manifests, each with a unique, file-system-safe id.

``predict`` runs over a cohort (:mod:`probmcl_med.inference.cohort`) when it is given several inputs, a glob pattern,
a manifest CSV, or a folder that holds slides; one slide file alone keeps the one-slide command.

- A **folder**: the slides directly inside it (files OpenSlide recognises, files with a slide-only extension, plain
  TIFFs above ``--tile-above``), sorted by name. A folder that holds slides and images is refused (one kind per run).
- A **glob** (``'scans/**/*.svs'``, quoted so that the shell leaves it to us; ``**`` descends into folders): the
  files it matches, sorted; folders it matches (MIRAX data folders) are passed over.
- A **manifest** (a ``.csv`` file): one slide per row. Columns: ``slide`` (also ``path``, ``slide_path``, ``file``,
  ``filename``; relative paths are relative to the manifest's folder), optional ``slide_mpp`` (the slide's level-0
  microns per pixel, for a file that records none or records it wrongly; overrides ``--slide-mpp``), optional
  ``mask`` (the slide's ``--mask``: GeoJSON polygons in level-0 pixels or a binary image of the slide; relative to
  the manifest's folder), optional ``id`` (the slide's id, instead of one made from its name). Any other column
  (patient, diagnosis) is copied into ``cohort.csv`` beside the slide's row; a column named like a known one but
  misspelt (``slide_mmp``) is refused.

**Slide ids** name the output folder ``OUT/<id>/``. A manifest's ``id`` is used as given (letters, digits, ``.``,
``_``, ``-``; unique). Otherwise the id is the file's name without its extension, characters other than letters,
digits, ``.``, ``_`` and ``-`` replaced by ``_``. Slides whose ids would be equal (compared ignoring case, as macOS
and Windows file systems do) get longer ids, step by step until they differ: the extension kept (``x.svs`` and
``x.tif`` in one folder: ``x_svs``, ``x_tif``), then their parent folders prefixed, one more at each step
(``a/x.svs`` and ``b/x.svs``: ``a__x``, ``b__x``). An id therefore depends on the cohort it is in: a slide that gains
a namesake in a later run gets a longer id there (its earlier outputs stay under the old one); a manifest's ``id``
column pins ids.
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from probmcl_med.data.csv_dataset import find_column, read_table, resolve_image_path
from probmcl_med.data.imageio import IMAGE_SUFFIXES
from probmcl_med.data.slides import SLIDE_COLUMNS
from probmcl_med.errors import DataError
from probmcl_med.inference.inputs import LARGE_IMAGE_PIXELS, input_kind, is_slide

MANIFEST_SUFFIXES = (".csv",)
"""A positional input with this extension is a manifest of slides."""

ID_COLUMNS = ("id", "slide_id")
MPP_COLUMN = "slide_mpp"
MASK_COLUMN = "mask"
RESERVED_IDS = frozenset({"cohort.csv", "failed.csv", "cohort.html"})
"""Names of the cohort's own files in ``OUT``; no slide folder takes them."""

MAX_ID_LENGTH = 120
GLOB_CHARACTERS = frozenset("*?[")
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class CohortSlide:
    """One slide of a cohort.

    Attributes:
        id: the slide's id: its output folder's name (module docstring).
        path: the slide file as given (relative manifest paths joined to the manifest's folder).
        slide_mpp: level-0 microns per pixel from the manifest's ``slide_mpp`` column, or None.
        mask: a mask file from the manifest's ``mask`` column, or None.
        source: where the slide was listed, for messages (``manifest.csv, row 3 (line 5)``, a folder, a pattern).
        extra: the manifest's other columns for this row (copied into ``cohort.csv``).
    """

    id: str
    path: Path
    slide_mpp: float | None = None
    mask: Path | None = None
    source: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def is_glob(text: str | Path) -> bool:
    """True when ``text`` is a glob pattern (it holds ``*``, ``?`` or ``[``) and no file of that name exists."""
    return bool(GLOB_CHARACTERS & set(str(text))) and not Path(text).exists()


def is_manifest(path: str | Path) -> bool:
    """True for a positional input that names a manifest of slides (a ``.csv`` file)."""
    return Path(path).suffix.lower() in MANIFEST_SUFFIXES


def folder_slides(folder: Path, large_pixels: int = LARGE_IMAGE_PIXELS) -> tuple[list[Path], int]:
    """The slides directly inside ``folder`` (sorted by name) and the number of other image files there."""
    slides, images = [], 0
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if is_slide(path):
            slides.append(path)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            if _kind(path, large_pixels) == "slide":
                slides.append(path)
            else:
                images += 1
    return slides, images


def _kind(path: Path, large_pixels: int) -> str:
    try:
        return input_kind(path, large_pixels)
    except DataError:  # a huge non-TIFF image: an image, refused as such when it is predicted
        return "image"


def is_cohort(inputs: Sequence[str | Path], large_pixels: int = LARGE_IMAGE_PIXELS) -> bool:
    """Whether ``predict`` runs over a cohort: several inputs (unless all are image files), a glob, a manifest, or a
    folder that holds slides."""
    if len(inputs) > 1:
        return not all(Path(p).is_file() and _kind(Path(p), large_pixels) == "image" for p in inputs)
    if not inputs:
        return False
    only = Path(inputs[0])
    if is_glob(only) or (is_manifest(only) and not only.is_dir()):
        return True
    return only.is_dir() and bool(folder_slides(only, large_pixels)[0])


def collect_slides(inputs: Sequence[str | Path], large_pixels: int = LARGE_IMAGE_PIXELS) -> list[CohortSlide]:
    """Every slide of the inputs, in order, each listed once (by its resolved path), with its id.

    A path that does not exist is kept: predicting it fails, and ``failed.csv`` records why.

    Raises:
        DataError: a pattern that matches nothing, a folder without slides or with slides and images, a manifest
            that cannot be read, or the same slide twice in a manifest.
    """
    slides: list[CohortSlide] = []
    for text in inputs:
        path = Path(text)
        if is_glob(path):
            matches = [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if not Path(p).is_dir()]
            if not matches:
                raise DataError(f"the pattern {path} matches no file; check it (quote it so that the shell leaves it)")
            slides += [CohortSlide("", p, source=f"pattern {path}") for p in matches]
        elif path.is_dir():
            found, images = folder_slides(path, large_pixels)
            if not found:
                raise DataError(f"folder {path} holds no slides; give slides, a folder of slides or a manifest")
            if images:
                raise DataError(
                    f"folder {path} holds {len(found)} slide(s) and {images} other image(s): predict takes one kind "
                    f"per run; give the slides as a glob ('{path}/*.svs') or a manifest, or move the images apart"
                )
            slides += [CohortSlide("", p, source=f"folder {path}") for p in found]
        elif is_manifest(path):
            slides += read_slide_manifest(path)
        else:
            slides.append(CohortSlide("", path, source="the command line"))
    unique: dict[str, CohortSlide] = {}
    for slide in slides:
        unique.setdefault(_identity(slide.path), slide)
    return assign_ids(list(unique.values()))


def _identity(path: Path) -> str:
    try:
        return str(path.resolve())
    except OSError:
        return str(path.absolute())


def _mpp_cell(text: str, where: str) -> float | None:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise DataError(f"{where}, column '{MPP_COLUMN}': {text!r} is not a positive number of microns per pixel")
    return value


def read_slide_manifest(path: Path) -> list[CohortSlide]:
    """The slides of a manifest CSV (columns in the module docstring), in row order.

    Raises:
        DataError: no slide column, an empty slide cell, a bad ``slide_mpp``, a misspelt column, a bad or repeated
            ``id``, or one slide in two rows; each names the manifest and the row.
    """
    header, rows = read_table(path)
    slide_col = find_column(header, None, SLIDE_COLUMNS, path, "slide")
    lower = {h.lower(): h for h in header}
    id_col = next((lower[c] for c in ID_COLUMNS if c in lower), None)
    mpp_col, mask_col = lower.get(MPP_COLUMN), lower.get(MASK_COLUMN)
    known = {slide_col, id_col, mpp_col, mask_col} - {None}
    for column in header:
        if column in known:
            continue
        close = difflib.get_close_matches(column.lower(), [MPP_COLUMN, MASK_COLUMN, *ID_COLUMNS], n=1, cutoff=0.75)
        if close:
            raise DataError(
                f"{path}: column '{column}' is not one predict reads; did you mean '{close[0]}'? (columns read: "
                f"slide, {MPP_COLUMN}, {MASK_COLUMN}, id; any other column is copied into cohort.csv)"
            )
    extra_cols = [c for c in header if c not in known]
    folder = path.parent
    slides, seen = [], {}
    for i, row in enumerate(rows):
        where = f"{path}, row {i} (line {i + 2})"
        if not row[slide_col]:
            raise DataError(f"{where}: the '{slide_col}' cell is empty; give the slide's file")
        slide_path = Path(resolve_image_path(row[slide_col], folder))
        key = _identity(slide_path)
        if key in seen:
            raise DataError(f"{where}: slide {slide_path} is already listed in row {seen[key]}; list each slide once")
        seen[key] = i
        mask = row.get(mask_col, "") if mask_col else ""
        slides.append(
            CohortSlide(
                id=row[id_col] if id_col else "",
                path=slide_path,
                slide_mpp=_mpp_cell(row[mpp_col], where) if mpp_col else None,
                mask=Path(resolve_image_path(mask, folder)) if mask else None,
                source=where,
                extra={c: row[c] for c in extra_cols},
            )
        )
    if not slides:
        raise DataError(f"{path}: the manifest lists no slides; give one slide per row under a '{slide_col}' column")
    if id_col:
        _check_given_ids(slides, id_col)
    return slides


def _check_given_ids(slides: Sequence[CohortSlide], column: str) -> None:
    taken: dict[str, str] = {}
    for slide in slides:
        if not _SAFE_ID.fullmatch(slide.id) or slide.id.lower() in RESERVED_IDS or len(slide.id) > MAX_ID_LENGTH:
            raise DataError(
                f"{slide.source}, column '{column}': {slide.id!r} cannot name a folder; use letters, digits, '.', "
                f"'_' and '-' (starting with a letter or digit, at most {MAX_ID_LENGTH} characters)"
            )
        if slide.id.lower() in taken:
            raise DataError(f"{slide.source}: the id {slide.id!r} is also {taken[slide.id.lower()]}'s; make ids unique")
        taken[slide.id.lower()] = slide.source


def safe_id(text: str) -> str:
    """``text`` with every run of characters other than letters, digits, ``.``, ``_``, ``-`` replaced by ``_``,
    leading dots, underscores and dashes removed (a folder starting with ``.`` is hidden), at most
    :data:`MAX_ID_LENGTH` characters (a longer one ends with 8 hex digits of its hash)."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip("._-") or "slide"
    if len(out) > MAX_ID_LENGTH:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        out = f"{out[: MAX_ID_LENGTH - 9]}-{digest}"
    return out


def _candidates(path: Path) -> list[str]:
    """The ids a slide may take, shortest first: its stem, then with its extension, then with one parent folder
    more at each step (each without and with the extension), last with a hash of its resolved path (unique)."""
    parts = [p for p in _identity(path).split("/") if p][:-1]
    ext = path.suffix[1:]
    names = []
    for k in range(len(parts) + 1):
        stem = "__".join([*parts[len(parts) - k :], path.stem])
        names += [stem, f"{stem}_{ext}"] if ext else [stem]
    names.append(f"{path.stem}-{hashlib.sha256(_identity(path).encode()).hexdigest()[:12]}")
    return [safe_id(n) for n in names]


def assign_ids(slides: Sequence[CohortSlide]) -> list[CohortSlide]:
    """The slides with their ids (module docstring): given ids kept, the others made from the file names.

    Raises:
        DataError: two given ids are equal (ignoring case).
    """
    given = [bool(s.id) for s in slides]
    options = [[s.id] if s.id else _candidates(s.path) for s in slides]
    level = [0] * len(slides)
    while True:
        ids = [options[i][level[i]] for i in range(len(slides))]
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(ids):
            groups.setdefault(name.lower(), []).append(i)
        clashes = [i for name, members in groups.items() for i in members if len(members) > 1 or name in RESERVED_IDS]
        movable = [i for i in clashes if not given[i] and level[i] < len(options[i]) - 1]
        if not movable:
            break
        for i in movable:
            level[i] += 1
    for members in groups.values():
        if len(members) > 1:  # only given ids can remain equal (made ones end with a hash of a unique path)
            first, second = (slides[i] for i in members[:2])
            raise DataError(f"{second.source}: the id {second.id!r} is also {first.source}'s; make ids unique")
    return [CohortSlide(ids[i], s.path, s.slide_mpp, s.mask, s.source, s.extra) for i, s in enumerate(slides)]
