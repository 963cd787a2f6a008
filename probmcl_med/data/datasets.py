"""The built-in dataset factories, registered in DATASETS when this module is imported (by the config's validators,
by ``from probmcl_med import DATASETS``).

Every factory has the same shape::

    factory(root: str | None, split: str = "train", **options) -> MultiLabelDataset

with ``split`` one of train, valid, test and ``options`` the config's ``dataset.options`` (plus ``skip_bad``, the
config's ``dataset.skip_bad``).
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from probmcl_med.data.adp import load_adp
from probmcl_med.data.base import MultiLabelDataset
from probmcl_med.data.coco import load_coco
from probmcl_med.data.csv_dataset import load_csv_dataset
from probmcl_med.data.demo import load_demo
from probmcl_med.data.slides import load_slides
from probmcl_med.errors import DataError
from probmcl_med.registry import DATASETS


@DATASETS.register("demo")
def demo(root: str | None = None, split: str = "train", **options: Any) -> MultiLabelDataset:
    """Embedded demo: 2x2 mosaics of scikit-learn's handwritten digits, 11 structured labels, no download.

    Options: seed, n_train, n_valid, n_test, tile (see probmcl_med.data.demo). ``root``: cache folder (default
    $PROBMCL_MED_CACHE/demo or ~/.cache/probmcl-med/demo).
    """
    return load_demo(root, split, **_known(options, load_demo, "demo"))


@DATASETS.register("csv")
def csv(root: str | None, split: str = "train", **options: Any) -> MultiLabelDataset:
    """Your own images + a labels CSV (0/1 columns or a |-separated labels column; optional split column).

    Options: csv, image_column, labels_column, classes, split_column, group_column, images_dir, seed,
    valid_fraction, test_fraction, skip_bad, encoding, allow_outside_root, intensity (see
    probmcl_med.data.csv_dataset).
    """
    return load_csv_dataset(root, split, **_known(options, load_csv_dataset, "csv"))


@DATASETS.register("adp")
def adp(root: str | None, split: str = "train", **options: Any) -> MultiLabelDataset:
    """Atlas of Digital Pathology (ADP V1.0 release): hierarchical tissue types at level L1, L2 or L3.

    Options: level (L3), drop_unlabeled (False), csv, images_dir, classes, seed, valid_fraction, test_fraction,
    skip_bad (see probmcl_med.data.adp).
    """
    return load_adp(root, split, **_known(options, load_adp, "adp"))


@DATASETS.register("coco")
def coco(root: str | None, split: str = "train", **options: Any) -> MultiLabelDataset:
    """MS-COCO 2014/2017 multi-label: 80 categories from instances_*.json via pycocotools (valid/test: val json).

    Options: year (auto), annotations, images_dir, keep_empty (False), skip_bad (see probmcl_med.data.coco).
    """
    return load_coco(root, split, **_known(options, load_coco, "coco"))


@DATASETS.register("slides")
def slides(root: str | None, split: str = "train", **options: Any) -> MultiLabelDataset:
    """Patches read lazily from whole-slide images (OpenSlide) listed in a manifest of slide, x, y, level, size, labels.

    Options: manifest, classes, labels_column, size, level, mpp, slide_mpp, split_column, group_column, seed,
    valid_fraction, test_fraction, skip_bad (see probmcl_med.data.slides).
    """
    return load_slides(root, split, **_known(options, load_slides, "slides"))


def _known(options: dict[str, Any], loader: Any, name: str) -> dict[str, Any]:
    """``options`` after checking every key is a keyword of ``loader`` (one-line error with close matches)."""
    params = [
        p.name
        for p in inspect.signature(loader).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in {"name", "mean", "std"}
    ]
    for key in options:
        if key not in params:
            close = difflib.get_close_matches(key, params, n=2, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise DataError(f"dataset '{name}': unknown option dataset.options.{key}; {hint}known: {', '.join(params)}")
    return options


def build_dataset(
    name: str, root: str | None, split: str, options: dict[str, Any] | None = None, skip_bad: bool = False
) -> MultiLabelDataset:
    """Build a registered dataset the way a run does: ``DATASETS.get(name)(root, split, skip_bad=..., **options)``.

    ``skip_bad`` is passed only to factories that accept it (a plugin factory may not); ``options`` is the config's
    ``dataset.options``. Typical use: ``build_dataset(cfg.dataset.name, cfg.dataset.root, cfg.dataset.train_split,
    cfg.dataset.options, cfg.dataset.skip_bad)``.
    """
    factory = DATASETS.get(name)
    kwargs = dict(options or {})
    params = inspect.signature(factory).parameters
    if "skip_bad" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs.setdefault("skip_bad", skip_bad)
    return factory(root, split, **kwargs)
