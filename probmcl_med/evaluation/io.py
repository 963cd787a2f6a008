"""Reading score and target files for ``probmcl-med evaluate --scores S --targets T``.

Formats (chosen by the file's extension; the two files may differ):

- ``.csv``: one row per sample, one column per class. The first line is a header of class names unless every cell
  of it is a number, in which case the file has no header and classes are called ``class_0 ...``. A first column
  whose header is one of :data:`ID_COLUMNS` (``image``, ``id``, ``path``, ...; case-insensitive) holds sample ids:
  it is dropped from the numbers, and when both files have one the ids must agree row by row (a shuffled file
  would otherwise give silently wrong metrics).
- ``.npy``: a 2-D numeric array (samples, classes); no class names.

Scores are probabilities in [0, 1]; targets are 0/1. Every problem raises :class:`probmcl_med.errors.DataError` with
one line naming the file (and, for a bad value, the CSV line and class column, or the 0-based array row and column).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probmcl_med.core.metrics import check_scores_targets
from probmcl_med.errors import DataError

ID_COLUMNS = frozenset({"id", "image", "image_id", "path", "file", "filename", "sample", "sample_id", "name"})
SUPPORTED = (".csv", ".npy")


@dataclass
class _Table:
    """One loaded file: its values (N, C), class names from a header (or None), sample ids (or None)."""

    path: Path
    values: np.ndarray
    class_names: list[str] | None
    ids: list[str] | None
    lines: list[int] | None  # the CSV line number of each data row (blank lines skipped); None for .npy

    def locate(self, row: int, col: int) -> str:
        """Words that find value (row, col) in the file: the CSV line and class column, or the array indices."""
        if self.lines is None:
            return f"row {row}, column {col}"
        name = self.class_names[col] if self.class_names else f"#{col + 1}"
        return f"line {self.lines[row]}, column {name!r}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(path: Path) -> _Table:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            numbered = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc})") from exc
    if not numbered:
        raise DataError(f"{path}: the file is empty; expected one row per sample and one column per class")
    header: list[str] | None = None
    if not all(_is_number(cell) for cell in numbered[0][1]):
        header = [cell.strip() for cell in numbered.pop(0)[1]]
    if not numbered:
        raise DataError(f"{path}: has a header but no data rows; expected one row per sample")
    lines = [line for line, _ in numbered]
    rows = [row for _, row in numbered]
    width = len(header) if header is not None else len(rows[0])
    for line, row in numbered:
        if len(row) != width:
            first = "the header" if header is not None else f"line {lines[0]}"
            raise DataError(f"{path}: line {line} has {len(row)} cells but {first} has {width}")
    has_id = header is not None and header[0].lower() in ID_COLUMNS
    ids = [row[0].strip() for row in rows] if has_id else None
    cells = [row[1:] for row in rows] if has_id else rows
    names = (header[1:] if has_id else header) if header is not None else None
    table = _Table(path, np.empty(0), names, ids, lines)
    try:
        table.values = np.array(cells, dtype=np.float64)
    except ValueError:
        for r, row in enumerate(cells):
            for c, cell in enumerate(row):
                if not _is_number(cell):
                    hint = "" if has_id or c else f"; a sample-id column must be named one of {sorted(ID_COLUMNS)}"
                    raise DataError(f"{path}: {cell!r} at {table.locate(r, c)} is not a number{hint}") from None
        raise
    return table


def _read_npy(path: Path) -> _Table:
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read as a numeric .npy array ({exc})") from exc
    if not (np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_):
        raise DataError(f"{path}: holds {values.dtype} values; expected numbers")
    return _Table(path, values.astype(np.float64), None, None, None)


def _read(path: str | Path, role: str) -> _Table:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{role} file {path} not found" + (" (it is a folder)" if path.is_dir() else ""))
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED:
        raise DataError(f"{role} file {path}: unsupported extension {suffix!r}; use one of {', '.join(SUPPORTED)}")
    table = _read_csv(path) if suffix == ".csv" else _read_npy(path)
    if table.values.ndim != 2 or table.values.shape[0] == 0 or table.values.shape[1] == 0:
        raise DataError(f"{path}: expected a 2-D table (samples, classes), got shape {tuple(table.values.shape)}")
    return table


def load_scores_targets(scores_path: str | Path, targets_path: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load and check a scores file and a targets file (CSV or .npy; see the module docstring).

    Args:
        scores_path: (N, C) probabilities in [0, 1].
        targets_path: (N, C) 0/1 labels.

    Returns:
        ``(scores, targets, class_names)``: two float64 (N, C) arrays and C names (from a CSV header, the scores
        file's first, or ``class_0 ...`` when neither file has one).

    Raises:
        DataError: a missing or unreadable file, an unsupported extension, a non-numeric cell, a ragged row, wrong or
            mismatched shapes, NaN/Inf or values outside [0, 1] in scores, a target other than 0/1, class-name
            headers that differ between the files, or sample ids that differ.
    """
    s, t = _read(scores_path, "scores"), _read(targets_path, "targets")
    check_scores_targets(s.values, t.values, str(s.path), str(t.path), locate_scores=s.locate, locate_targets=t.locate)
    if s.class_names is not None and t.class_names is not None and s.class_names != t.class_names:
        i = next(i for i, (a, b) in enumerate(zip(s.class_names, t.class_names, strict=True)) if a != b)
        raise DataError(
            f"{s.path} and {t.path} name class column {i + 1} differently ({s.class_names[i]!r} vs "
            f"{t.class_names[i]!r}); both files must list the same classes in the same order"
        )
    if s.ids is not None and t.ids is not None and s.ids != t.ids:
        r = next(r for r, (a, b) in enumerate(zip(s.ids, t.ids, strict=True)) if a != b)
        raise DataError(
            f"{s.path} and {t.path} disagree on the sample at data row {r + 1} ({s.ids[r]!r} vs {t.ids[r]!r}); "
            "both files must list the same samples in the same order"
        )
    names = s.class_names or t.class_names or [f"class_{i}" for i in range(s.values.shape[1])]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{s.path if s.class_names else t.path}: class name {dup!r} appears more than once")
    return s.values, t.values, names
