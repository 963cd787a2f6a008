"""MS-COCO as a multi-label dataset: an image's labels are the categories of its instance annotations.

Layout (``root``)::

    annotations/instances_train2014.json   (or 2017)
    annotations/instances_val2014.json
    train2014/  val2014/                    the images named by ``file_name``

Splits: ``train`` reads the train JSON; ``valid`` and ``test`` both read the val JSON (COCO's test images have no
public annotations; multi-label papers, ASL and ProbMCL included, report on val2014), so valid and test are the
same images.

Classes: the 80 category ids, in ascending id order, mapped to 0..79 (ids run 1..90 with gaps); names from the
file's ``categories``. Images without annotations are skipped unless ``keep_empty=True`` (COCO-2014 train has
about 700 such images). Crowd annotations count as labels.

Options: ``year`` (2014 or 2017; default: whichever train JSON exists, 2014 first), ``annotations`` (an explicit
JSON path, relative to root), ``images_dir`` (default ``train{year}`` / ``val{year}``), ``keep_empty``, ``skip_bad``.
Parsing and indexing go through pycocotools.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from probmcl_med.data.base import MultiLabelDataset, normalize_split
from probmcl_med.data.csv_dataset import check_root
from probmcl_med.errors import DataError
from probmcl_med.fileio import read_json

COCO_KEYS = ("images", "annotations", "categories")


def read_coco(path: Path) -> Any:
    """A ``pycocotools.coco.COCO`` index of an instances JSON.

    Raises:
        DataError: missing file, not JSON, or JSON that is not a COCO instances file.
    """
    data = read_json(
        path,
        f"COCO annotations {path} do not exist; expected ROOT/annotations/instances_<split><year>.json",
        "; is the download complete?",
    )
    missing = [k for k in COCO_KEYS if not isinstance(data, dict) or not isinstance(data.get(k), list)]
    if missing:
        raise DataError(
            f"{path}: not a COCO instances file (no list '{missing[0]}'; expected keys images, annotations, categories)"
        )
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        try:
            coco.createIndex()
        except (KeyError, TypeError) as exc:
            raise DataError(f"{path}: malformed COCO entry (missing {exc})") from None
    return coco


def _pick_year(folder: Path) -> int:
    for year in (2014, 2017):
        if (folder / "annotations" / f"instances_train{year}.json").is_file():
            return year
    raise DataError(
        f"{folder}: no annotations/instances_train2014.json or instances_train2017.json; set dataset.root to the "
        "COCO folder (or dataset.options.annotations)"
    )


def load_coco(
    root: str | Path | None,
    split: str = "train",
    *,
    year: int | None = None,
    annotations: str | None = None,
    images_dir: str | None = None,
    keep_empty: bool = False,
    skip_bad: bool = False,
) -> MultiLabelDataset:
    """COCO images of one split with 80-class multi-hot labels (layout and options in the module docstring)."""
    folder = check_root(root, "coco")
    split = normalize_split(split, "coco")
    part = "train" if split == "train" else "val"
    if annotations:
        json_path = Path(annotations) if Path(annotations).is_absolute() else folder / annotations
        year = year or 2014
    else:
        year = int(year or _pick_year(folder))
        json_path = folder / "annotations" / f"instances_{part}{year}.json"
    coco = read_coco(json_path)
    cat_ids = sorted(coco.getCatIds())
    if not cat_ids:
        raise DataError(f"{json_path}: the file has no categories")
    index = {cid: i for i, cid in enumerate(cat_ids)}
    class_names = [coco.cats[cid]["name"] for cid in cat_ids]
    image_folder = folder / (images_dir or f"{part}{year}")
    items: list[dict[str, Any]] = []
    for image_id in sorted(coco.getImgIds()):
        label = np.zeros(len(cat_ids), dtype=np.float32)
        for ann in coco.imgToAnns.get(image_id, []):
            cid = ann.get("category_id")
            if cid not in index:
                raise DataError(f"{json_path}, image id {image_id}: annotation with unknown category_id {cid}")
            label[index[cid]] = 1.0
        if not label.any() and not keep_empty:
            continue
        info = coco.imgs[image_id]
        if "file_name" not in info:
            raise DataError(f"{json_path}, image id {image_id}: no file_name")
        items.append({"image": str(image_folder / info["file_name"]), "label": label, "row": int(image_id)})
    if not items:
        raise DataError(f"{json_path}: no annotated images (set dataset.options.keep_empty=true to keep empty ones)")
    return MultiLabelDataset(
        items, class_names, name="coco", source=json_path, row_label="image id {row}", skip_bad=skip_bad
    )
