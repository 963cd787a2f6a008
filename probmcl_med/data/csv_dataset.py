"""Your own data: a folder of images and a CSV of labels (the path most users take first).

Layout (``root`` is the folder; every option below goes under ``dataset.options``)::

    my_data/
      labels.csv          image,labels,split            or   image,tumour,stroma,necrosis,split
                          a.png,tumour|stroma,train          a.png,1,1,0,train
                          b.png,,valid                       b.png,0,0,0,valid
      images/a.png ...    (paths in the CSV are relative to root, or to images_dir when given)

- Image column: ``image_column`` (default: the first of image, path, filename, file, patch names; any case).
- Labels, either style:
  one ``labels`` column (``labels_column``) of ``|``-separated class names (an empty cell is "no label"), or one
  0/1 column per class (every column that is not the image, labels or split column; ``classes`` may pick some).
- Class order: ``classes`` when given, else the header order (0/1 style) or the sorted names seen (names style).
- Both styles in one file: the 0/1 columns win (header order) when they agree with the ``labels`` column on every
  row (said once); the first row where they differ is an error.
- Every row has the header's number of cells. Text is UTF-8 (a BOM is fine) unless ``encoding`` is set.
- Image paths must resolve inside root (or images_dir), symbolic links followed, unless ``allow_outside_root`` is
  true.
- ``intensity``: ``dtype`` (default) maps 16-bit, 12-bit and float images onto [0, 1] by the range the file states
  (else their type's), ``minmax`` by each image's own range; deep images stay float32 to the network input (see
  ``imageio.read_pixels``).
- Split: a ``split`` column (``split_column``; train/valid/test, val accepted); without one, a seeded random split
  with ``valid_fraction`` = ``test_fraction`` = 0.1 and ``seed`` = 0 (``base.seeded_split``).
- Groups: ``group_column`` (a patient or slide id): the automatic split keeps each group whole in one split (the
  fractions are then of groups, ``base.grouped_split``); items carry ``group``, and ``data check`` reports groups
  that a split column puts in two splits.

Every bad value is a one-line DataError naming the CSV, the row (and its line in the file) and the column.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from probmcl_med.data.base import (
    LABEL_SEPARATOR,
    MultiLabelDataset,
    class_name_problem,
    grouped_split,
    logger,
    normalize_split,
    seeded_split,
)
from probmcl_med.data.imageio import INTENSITY_MODES
from probmcl_med.errors import DataError, EmptySplit

IMAGE_COLUMN_CANDIDATES = ("image", "path", "filename", "file", "image_path", "patch names", "patch_name")


def read_table(path: str | Path, encoding: str | None = None) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV file (comma, semicolon or tab separated; UTF-8 with or without a BOM by default).

    Every row must have as many cells as the header (blank lines are skipped): a short row would read its missing
    labels as 0, a long one would drop cells, so both are errors.

    Args:
        path: the CSV file.
        encoding: the file's text encoding (None: UTF-8, a BOM is fine; ``dataset.options.encoding``).

    Raises:
        DataError: missing file, a file that is not text in ``encoding``, no header row, a header naming a column
            twice, or a row whose number of cells differs from the header's.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist")
    text = decode_text(path, path.read_bytes(), encoding)
    if not text.strip():
        raise DataError(f"{path}: the CSV file is empty; it needs a header row and one row per image")
    try:  # only the separator is guessed: quoting stays the standard one (a quote inside a quoted cell doubled)
        delimiter = csv.Sniffer().sniff(text.splitlines()[0], delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [h.strip() for h in next(reader)]
    for column in header:
        if header.count(column) > 1:
            raise DataError(f"{path}: column '{column}' appears twice in the header; give each column its own name")
    rows: list[dict[str, str]] = []
    for cells in reader:
        if not cells:
            continue
        if len(cells) != len(header):
            i = len(rows)
            raise DataError(
                f"{path}, row {i} (line {reader.line_num}): {len(cells)} cells, expected {len(header)} "
                f"({', '.join(header)}); quote cells that contain the separator"
            )
        rows.append({h: v.strip() for h, v in zip(header, cells, strict=True)})
    return header, rows


def decode_text(path: Path, data: bytes, encoding: str | None) -> str:
    """``data`` as text: UTF-8 (a BOM is dropped) unless ``encoding`` is given; else a one-line DataError."""
    try:
        return data.decode(encoding or "utf-8").removeprefix("\ufeff")
    except LookupError:
        raise DataError(
            f"{path}: dataset.options.encoding={encoding!r} is not an encoding Python knows; use e.g. utf-8, "
            "latin-1 or cp1252"
        ) from None
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        byte = data[exc.start]
        if encoding:
            raise DataError(f"{path}: line {line} is not valid {encoding} text (byte 0x{byte:02x})") from None
        raise DataError(
            f"{path}: the file's encoding is not UTF-8 (byte 0x{byte:02x} on line {line}); convert it, e.g. "
            f"iconv -f latin1 -t utf-8 {path.name} > utf8.csv, or set dataset.options.encoding=latin-1 (or its "
            "encoding)"
        ) from None


def find_column(header: Sequence[str], wanted: str | None, candidates: Sequence[str], path: Path, what: str) -> str:
    """The column named ``wanted``, or the first of ``candidates`` present (case-insensitive).

    Raises:
        DataError: naming the file, what was looked for and the columns found.
    """
    lower = {h.lower(): h for h in header}
    names = [wanted] if wanted else list(candidates)
    for name in names:
        if name.lower() in lower:
            return lower[name.lower()]
    looked = f"'{wanted}'" if wanted else " or ".join(f"'{c}'" for c in candidates)
    option = f" (set dataset.options.{what}_column)" if not wanted else ""
    raise DataError(f"{path}: no {what} column {looked}{option}; columns found: {', '.join(header)}")


def parse_binary(value: str, path: Path, row: int, column: str) -> float:
    """A 0/1 cell as 0.0 / 1.0 (``1.0``, ``true``, ``false`` accepted); anything else is a DataError."""
    text = value.strip().lower()
    if text in {"1", "1.0", "true", "yes"}:
        return 1.0
    if text in {"0", "0.0", "false", "no", ""}:
        return 0.0
    raise DataError(f"{path}, row {row} (line {row + 2}), column '{column}': label value {value!r} is not 0 or 1")


def parse_name_list(value: str, known: dict[str, int] | None, path: Path, row: int, column: str) -> list[str]:
    """``a|b|c`` -> names; with ``known`` (explicit classes), an unknown name is a DataError."""
    names = [n.strip() for n in value.split(LABEL_SEPARATOR) if n.strip()]
    if known is not None:
        for name in names:
            if name not in known:
                raise DataError(
                    f"{path}, row {row} (line {row + 2}), column '{column}': unknown class name {name!r}; "
                    f"known classes: {', '.join(known)}"
                )
    return names


def labels_from_rows(
    header: Sequence[str],
    rows: Sequence[dict[str, str]],
    path: Path,
    *,
    exclude: Sequence[str],
    labels_column: str | None = None,
    classes: Sequence[str] | None = None,
) -> tuple[list[str], np.ndarray]:
    """Class names and a (N, C) float32 multi-hot matrix from a table, in either label style.

    A table with both a ``labels`` column (found by its name, not named by ``labels_column``) and 0/1 class columns
    uses the 0/1 columns, in header order, after checking that the two agree on every row; the first row where they
    differ is an error. A column counts as a 0/1 column when every cell is 0/1 (or empty) and one at least is not
    empty, so a text column (patient, notes) beside the labels column is not mistaken for a class.

    Args:
        header, rows: from :func:`read_table`.
        path: the file (for messages).
        exclude: columns that are not class columns (image, split, slide coordinates, ...).
        labels_column: name of a ``|``-separated names column; None: use ``labels`` when present, else 0/1 columns.
        classes: explicit class list (order kept); names outside it are errors.
    """
    lower = {h.lower(): h for h in header}
    names_col = lower.get((labels_column or "labels").lower())
    if labels_column and names_col is None:
        raise DataError(f"{path}: no labels column '{labels_column}'; columns found: {', '.join(header)}")
    if names_col is None:
        return _labels_from_flags(header, rows, path, exclude, classes)
    known = {c: i for i, c in enumerate(classes)} if classes is not None else None
    per_row = [parse_name_list(r.get(names_col, ""), known, path, i, names_col) for i, r in enumerate(rows)]
    excluded = {e.lower() for e in [*exclude, names_col]}
    flag_columns = [h for h in header if h.lower() not in excluded and _is_flag_column(rows, h)]
    if labels_column is None and flag_columns:
        class_names, labels = _labels_from_flags(header, rows, path, [*exclude, names_col], classes or flag_columns)
        _check_formats_agree(per_row, class_names, labels, path, names_col)
        return class_names, labels
    class_names = list(classes) if classes is not None else sorted({n for names in per_row for n in names})
    if not class_names:
        raise DataError(f"{path}: column '{names_col}' names no class in any row; write e.g. tumour|stroma")
    index = {c: i for i, c in enumerate(class_names)}
    labels = np.zeros((len(rows), len(class_names)), dtype=np.float32)
    for i, names in enumerate(per_row):
        for name in names:
            labels[i, index[name]] = 1.0
    return class_names, labels


def _is_flag_column(rows: Sequence[dict[str, str]], column: str) -> bool:
    """Every cell of ``column`` reads as 0/1 and one at least is not empty."""
    cells = [r.get(column, "").strip().lower() for r in rows]
    return any(cells) and all(c in _FLAG_VALUES for c in cells)


_FLAG_VALUES = {"1", "1.0", "true", "yes", "0", "0.0", "false", "no", ""}

_NOTED: set[str] = set()  # tables already reported as holding both label formats (said once per process)


def _check_formats_agree(
    per_row: Sequence[list[str]], class_names: Sequence[str], labels: np.ndarray, path: Path, names_col: str
) -> None:
    """Raise on the first row where the names column and the 0/1 columns disagree; else say once which one is used."""
    for i, names in enumerate(per_row):
        flagged = [c for c, v in zip(class_names, labels[i], strict=True) if v]
        if set(names) != set(flagged):
            raise DataError(
                f"{path}, row {i} (line {i + 2}): the '{names_col}' column says {LABEL_SEPARATOR.join(names) or '(none)'}"
                f" but the 0/1 columns say {LABEL_SEPARATOR.join(flagged) or '(none)'}; keep one label format, or set "
                f"dataset.options.labels_column={names_col} to use the names and ignore the 0/1 columns"
            )
    if str(path) not in _NOTED:
        _NOTED.add(str(path))
        logger.warning(
            "%s: both a '%s' column and 0/1 class columns; they agree on every row, using the 0/1 columns in header "
            "order (%s)",
            path,
            names_col,
            ", ".join(class_names),
        )


def _labels_from_flags(
    header: Sequence[str],
    rows: Sequence[dict[str, str]],
    path: Path,
    exclude: Sequence[str],
    classes: Sequence[str] | None,
) -> tuple[list[str], np.ndarray]:
    """One 0/1 column per class: every column not in ``exclude`` (or ``classes``, in their order)."""
    excluded = {e.lower() for e in exclude}
    class_columns = [h for h in header if h.lower() not in excluded]
    if classes is not None:
        missing = [c for c in classes if c not in class_columns]
        if missing:
            raise DataError(
                f"{path}: class column(s) {', '.join(repr(c) for c in missing)} not found; columns found: "
                f"{', '.join(header)}"
            )
        class_columns = list(classes)
    for column in class_columns:
        check_class_column(column, header, path)
    if not class_columns:
        raise DataError(
            f"{path}: no label columns: add a 'labels' column of |-separated names or one 0/1 column per class; "
            f"columns found: {', '.join(header)}"
        )
    labels = np.zeros((len(rows), len(class_columns)), dtype=np.float32)
    for i, r in enumerate(rows):
        for j, column in enumerate(class_columns):
            labels[i, j] = parse_binary(r.get(column, ""), path, i, column)
    return class_columns, labels


def check_class_column(column: str, header: Sequence[str], path: Path) -> None:
    """A 0/1 column's header is its class name: refuse one that would not read back from predict's labels.csv
    (:func:`~probmcl_med.data.base.class_name_problem`), naming the column and what to do."""
    problem = class_name_problem(column)
    if problem is None:
        return
    if not column.strip():
        position = list(header).index(column) + 1
        raise DataError(
            f"{path}: column {position} of the header has no name; name the class, or remove the empty column (a "
            "trailing separator makes one)"
        )
    better = "_".join(column.replace(LABEL_SEPARATOR, " ").split())
    raise DataError(
        f"{path}: class column {column!r} {problem}, so predicted labels could not be read back; rename the column, "
        f"e.g. to {better!r}"
    )


def read_groups(
    header: Sequence[str], rows: Sequence[dict[str, str]], group_column: str | None, path: Path
) -> tuple[str | None, list[str] | None]:
    """The group column (patient, slide) and each row's group, or (None, None) without ``group_column``.

    Raises:
        DataError: the column is missing, or a row has an empty group.
    """
    if not group_column:
        return None, None
    column = find_column(header, group_column, (), path, "group")
    groups = [r[column] for r in rows]
    if "" in groups:
        i = groups.index("")
        raise DataError(f"{path}, row {i} (line {i + 2}), column '{column}': empty group; give every row its id")
    return column, groups


def split_rows(
    rows: Sequence[dict[str, str]],
    split: str,
    path: Path,
    split_col: str | None,
    groups: Sequence[str] | None,
    seed: int,
    valid_fraction: float,
    test_fraction: float,
) -> list[int]:
    """Indices of the rows in ``split``: the split column's, else a seeded split of whole groups, else of rows."""
    if split_col is not None:
        return [
            i for i, r in enumerate(rows) if normalize_split(r[split_col], f"{path}, row {i} (line {i + 2})") == split
        ]
    if groups is not None:
        return grouped_split(groups, split, seed, valid_fraction, test_fraction).tolist()
    return seeded_split(len(rows), split, seed, valid_fraction, test_fraction).tolist()


def resolve_image_path(value: str, base: Path) -> str:
    """An image cell as a path: absolute paths kept, relative ones joined to ``base``."""
    p = Path(value)
    return str(p if p.is_absolute() else base / p)


def how_it_leaves(path: str, folder: Path, real_folder: Path) -> str | None:
    """None when ``path`` lies inside ``folder`` with ``..`` resolved and then every symbolic link followed (the file
    that will be read); else how it leaves, for the message.

    Args:
        path: the image path (absolute, or relative to the working folder).
        folder: the dataset folder as given; ``real_folder``: the same with its own links resolved.
    """
    if not Path(os.path.normpath(path)).is_relative_to(Path(os.path.normpath(folder))):
        return "points outside"
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(real_folder):
        return f"is, or lies in, a symbolic link that leads to {real}, outside"
    return None


def find_csv(root: Path, csv_name: str | None) -> Path:
    """``root/csv_name``, or the only CSV in ``root`` (``labels.csv`` preferred)."""
    if csv_name:
        p = Path(csv_name)
        return p if p.is_absolute() else root / p
    if (root / "labels.csv").is_file():
        return root / "labels.csv"
    found = sorted(root.glob("*.csv"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"{root}: no CSV file of labels found; add labels.csv or set dataset.options.csv")
    names = ", ".join(f.name for f in found)
    raise DataError(f"{root}: several CSV files ({names}); pick one with dataset.options.csv=NAME")


def check_root(root: str | Path | None, dataset: str) -> Path:
    """The dataset folder as a Path; a missing folder is a DataError saying how to set it."""
    if root is None:
        raise DataError(f"dataset '{dataset}' needs a folder: set dataset.root (or --root PATH)")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(
            f"dataset folder {path} does not exist; set dataset.root (or --root PATH) to the {dataset} folder"
        )
    return path


def load_csv_dataset(
    root: str | Path | None,
    split: str = "train",
    *,
    csv: str | None = None,
    image_column: str | None = None,
    labels_column: str | None = None,
    classes: Sequence[str] | None = None,
    split_column: str | None = None,
    images_dir: str | None = None,
    seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    skip_bad: bool = False,
    group_column: str | None = None,
    encoding: str | None = None,
    allow_outside_root: bool = False,
    intensity: str = "dtype",
    name: str = "csv",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> MultiLabelDataset:
    """Read a labels CSV into a :class:`MultiLabelDataset` (see the module docstring for the layout and options)."""
    folder = check_root(root, name)
    table = find_csv(folder, csv)
    header, rows = read_table(table, encoding)
    split = normalize_split(split, str(table))
    if intensity not in INTENSITY_MODES:
        raise DataError(f"dataset.options.intensity={intensity!r}: use {' or '.join(INTENSITY_MODES)}")
    image_col = find_column(header, image_column, IMAGE_COLUMN_CANDIDATES, table, "image")
    lower = {h.lower(): h for h in header}
    split_col = lower.get((split_column or "split").lower())
    if split_column and split_col is None:
        raise DataError(f"{table}: no split column '{split_column}'; columns found: {', '.join(header)}")
    group_col, groups = read_groups(header, rows, group_column, table)
    exclude = [c for c in (image_col, split_col, group_col) if c]
    class_names, labels = labels_from_rows(
        header, rows, table, exclude=exclude, labels_column=labels_column, classes=classes
    )
    chosen = split_rows(rows, split, table, split_col, groups, seed, valid_fraction, test_fraction)
    base = folder / images_dir if images_dir else folder
    real_base = base.resolve()
    items: list[dict[str, Any]] = []
    for i in chosen:
        value = rows[i][image_col]
        if not value:
            raise DataError(f"{table}, row {i} (line {i + 2}), column '{image_col}': empty image path")
        image = resolve_image_path(value, base)
        leaves = None if allow_outside_root else how_it_leaves(image, base, real_base)
        if leaves is not None:
            raise DataError(
                f"{table}, row {i} (line {i + 2}), column '{image_col}': image path {value!r} {leaves} the dataset "
                f"folder {base}; give a path inside it, or set dataset.options.allow_outside_root=true"
            )
        item = {"image": image, "label": labels[i], "row": i}
        if intensity != "dtype":
            item["intensity"] = intensity  # read by ReadImaged (probmcl_med.data.transforms)
        if groups is not None:
            item["group"] = groups[i]
        items.append(item)
    if not items:
        raise EmptySplit(f"{table}: the split '{split}' has no rows ({len(rows)} rows in the file)")
    return MultiLabelDataset(items, class_names, mean=mean, std=std, name=name, source=table, skip_bad=skip_bad)
