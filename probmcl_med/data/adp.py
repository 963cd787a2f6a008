"""The Atlas of Digital Pathology (ADP V1.0 release; Hosseini et al., CVPR 2019): hierarchical tissue types.

ADP is 17,668 H&E patches (1088 x 1088 px at 0.25 um/px, also released resized to 1 um/px) cut from 100 slides of
many organs, each labelled with up to 57 hierarchical histological tissue types (M. S. Hosseini et al., "Atlas of
Digital Pathology: A Generalized Hierarchical Histological Tissue Type-Annotated Database for Deep Learning", CVPR
2019, pp. 11747-11756). It is distributed on request, not by a public link: see :data:`ABOUT`.

Release layout (``root`` is the release folder, or its parent holding ``ADP V1.0 Release/``)::

    ADP V1.0 Release/
      ADP_EncodedLabels_Release1_Flat.csv    Patch Names,E,E.M,E.M.S,...,C,...   (one 0/1 column per code)
      img_res_1um_bicubic/                    the 1088 x 1088 patches named in "Patch Names"
      splits/train.npy valid.npy test.npy     row indices into the CSV (optional)

Options (``dataset.options``):

- ``level``: ``L1``, ``L2`` or ``L3``: the codes with at most 1, 2 or 3 dot-separated parts (``E`` is L1, ``E.M``
  L2, ``E.M.S`` L3). L2 and L3 keep the parent codes, as the release's own label sets do. Class order: the CSV's.
- ``classes``: an explicit list of codes instead (e.g. the 22 "L3Only" leaves).
- ``drop_unlabeled``: drop rows with no positive code at the chosen level (default False).
- ``csv`` (default: the release's flat CSV, else the only CSV), ``images_dir`` (``img_res_1um_bicubic``).
- Without ``splits/*.npy``: a seeded split, ``valid_fraction`` = ``test_fraction`` = 0.1 (the release's own split
  is about 80/10/10), ``seed`` = 0.

Normalisation: the dataset carries ADP's mean/std (``normalization.ADP_MEAN``/``ADP_STD``; see that module for
their source), used when the config says ``dataset.normalization: dataset``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from probmcl_med.data.base import MultiLabelDataset, normalize_split, seeded_split
from probmcl_med.data.csv_dataset import check_root, find_column, labels_from_rows, read_table, resolve_image_path
from probmcl_med.data.normalization import ADP_MEAN, ADP_STD
from probmcl_med.data.roots import ADP_ABOUT as ABOUT
from probmcl_med.data.roots import ADP_IMAGES_DIR as IMAGES_DIR
from probmcl_med.data.roots import ADP_RELEASE_CSV as RELEASE_CSV
from probmcl_med.data.roots import ADP_RELEASE_FOLDER as RELEASE_FOLDER
from probmcl_med.errors import DataError

CODE = re.compile(r"^[A-Z](\.[A-Z])*$")
LEVELS = {"L1": 1, "L2": 2, "L3": 3}


def code_depth(code: str) -> int:
    """Number of parts of a hierarchical code: ``E`` 1, ``E.M`` 2, ``E.M.S`` 3."""
    return code.count(".") + 1


def level_classes(header: Sequence[str], level: str) -> list[str]:
    """The tissue codes of ``header`` at ``level`` (parents kept), in header order."""
    key = str(level).upper()
    if key not in LEVELS:
        raise DataError(f"ADP: unknown level {level!r}; use L1, L2 or L3 (dataset.options.level)")
    return [h for h in header if CODE.match(h) and code_depth(h) <= LEVELS[key]]


def _release_dir(root: Path) -> Path:
    nested = root / RELEASE_FOLDER
    return nested if nested.is_dir() else root


def _split_rows(folder: Path, split: str, n: int, seed: int, valid_fraction: float, test_fraction: float) -> np.ndarray:
    split_file = folder / "splits" / f"{split}.npy"
    if not split_file.is_file():
        return seeded_split(n, split, seed, valid_fraction, test_fraction)
    try:
        rows = np.load(split_file, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{split_file}: not a numpy array of row indices ({exc})") from None
    rows = np.asarray(rows).reshape(-1)
    if rows.dtype.kind not in "iu":
        raise DataError(f"{split_file}: row indices must be integers, got dtype {rows.dtype}")
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise DataError(f"{split_file}: row index {int(rows.max())} is outside the CSV's {n} rows")
    return rows


def _check_download(images: Path, names: Sequence[str], split: str, skip_bad: bool) -> None:
    """Refuse an incomplete download in one line: the images folder missing, or patches of the split not in it.

    With ``skip_bad`` a partial download is used as it is (the dataset skips and counts the missing patches).
    """
    if not images.is_dir():
        raise DataError(f"ADP: the patch folder {images} does not exist: the download is incomplete. {ABOUT}")
    present = {p.name for p in images.iterdir()}
    missing = [n for n in names if Path(n).name not in present and not Path(n).is_absolute()]
    if missing and len(missing) == len(names):
        raise DataError(f"ADP: none of the {len(names)} patches of the {split} split is in {images} (the first: "
                        f"{missing[0]}). {ABOUT}")  # fmt: skip
    if not missing or skip_bad:
        return
    raise DataError(
        f"ADP: {len(missing)} of the {len(names)} patches of the {split} split are not in {images} (the first: "
        f"{missing[0]}): the download is incomplete; complete it, or set dataset.skip_bad=true to use the "
        f"{len(names) - len(missing)} present (data check then shows each class's count)"
    )


def load_adp(
    root: str | Path | None,
    split: str = "train",
    *,
    level: str = "L3",
    classes: Sequence[str] | None = None,
    drop_unlabeled: bool = False,
    csv: str | None = None,
    images_dir: str = IMAGES_DIR,
    seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    skip_bad: bool = False,
) -> MultiLabelDataset:
    """ADP patches of one split at one label level (layout and options in the module docstring).

    Raises:
        DataError: no ADP at ``root`` (the message says what ADP is and where to request it), a bad CSV or split
            file, or an incomplete download: the split's patches missing from the images folder (all of them, or
            some without ``skip_bad``; with ``skip_bad`` the present ones are used and the missing ones named).
    """
    folder = _release_dir(check_root(root, "adp"))  # no folder: the message says what ADP is (roots.ADP_ABOUT)
    if csv:
        table = Path(csv) if Path(csv).is_absolute() else folder / csv
    elif (folder / RELEASE_CSV).is_file():
        table = folder / RELEASE_CSV
    else:
        found = sorted(folder.glob("*.csv"))
        if len(found) != 1:
            raise DataError(
                f"{folder}: expected {RELEASE_CSV} (or one CSV; set dataset.options.csv), found "
                f"{', '.join(f.name for f in found) or 'none'}. {ABOUT}"
            )
        table = found[0]
    header, rows = read_table(table)
    split = normalize_split(split, str(table))
    image_col = find_column(header, "Patch Names", (), table, "image")
    wanted = list(classes) if classes is not None else level_classes(header, level)
    if not wanted:
        raise DataError(
            f"{table}: no tissue code columns (E, E.M, ...) at level {level}; columns found: {', '.join(header)}"
        )
    class_names, labels = labels_from_rows(header, rows, table, exclude=[image_col], labels_column=None, classes=wanted)
    chosen = _split_rows(folder, split, len(rows), seed, valid_fraction, test_fraction)
    if drop_unlabeled:
        chosen = np.asarray([i for i in chosen if labels[i].any()], dtype=np.int64)
    images = folder / images_dir
    _check_download(images, [rows[i][image_col] for i in chosen], split, skip_bad)
    items = [
        {"image": resolve_image_path(rows[i][image_col], images), "label": labels[i], "row": int(i)} for i in chosen
    ]
    return MultiLabelDataset(
        items, class_names, mean=ADP_MEAN, std=ADP_STD, name="adp", source=table, skip_bad=skip_bad
    )
