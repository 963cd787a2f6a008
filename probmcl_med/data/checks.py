"""Checking a dataset before a long run: label statistics and every image actually read.

:func:`check_dataset` is pure (it returns a dict; ``probmcl-med data check`` prints it): images, classes, positives
per class, label cardinality, images without a label, the most frequent co-occurring class pairs, image sizes, and
the files that cannot be read (missing, truncated, corrupt, outside their slide), each with its row.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from probmcl_med.data.base import MultiLabelDataset, image_path_of, logger
from probmcl_med.data.imageio import read_any
from probmcl_med.errors import DataError


def label_statistics(labels: np.ndarray, class_names: list[str], top_pairs: int = 10) -> dict[str, Any]:
    """Positives per class, cardinality and the most frequent co-occurring pairs of a (N, C) 0/1 matrix.

    Co-occurrence counts are the off-diagonal entries of Y^T Y (images holding both classes), largest first, ties
    broken by class order.
    """
    y = (np.asarray(labels) > 0.5).astype(np.int64)
    positives = y.sum(axis=0)
    per_image = y.sum(axis=1)
    co = y.T @ y
    rows, cols = np.triu_indices(len(class_names), k=1)
    counts = co[rows, cols]
    order = sorted(range(len(counts)), key=lambda k: (-counts[k], rows[k], cols[k]))
    pairs = [
        {"a": class_names[rows[k]], "b": class_names[cols[k]], "count": int(counts[k])}
        for k in order[:top_pairs]
        if counts[k] > 0
    ]
    return {
        "positives": {c: int(p) for c, p in zip(class_names, positives, strict=True)},
        "label_cardinality": float(per_image.mean()) if len(per_image) else 0.0,
        "images_without_label": int((per_image == 0).sum()),
        "max_labels_per_image": int(per_image.max()) if len(per_image) else 0,
        "top_pairs": pairs,
        "classes_without_positives": [c for c, p in zip(class_names, positives, strict=True) if p == 0],
    }


MISSING_CLASS_CONSEQUENCE = {
    "train": "the model cannot learn {them} and will never predict {them}; put images of {them} in the train split "
    "(with a group column another dataset.options.seed moves whole groups) or leave {them} out of the classes",
    "valid": "{their} recall and AP cannot be measured there and {their} threshold cannot be tuned; put images of "
    "{them} in the valid split",
    "test": "{their} recall and AP cannot be measured on the test split",
}
"""What a class without a positive image means, per split (``{them}``/``{their}``: the class or the classes)."""


def missing_classes_message(classes: list[str], split: str) -> str:
    """One line: which classes have no positive image in ``split`` and what that means (``split``: train, valid,
    test; another name reads as the test split)."""
    one = len(classes) == 1
    what = MISSING_CLASS_CONSEQUENCE.get(split, MISSING_CLASS_CONSEQUENCE["test"])
    what = what.format(them="it" if one else "them", their="its" if one else "their")
    names = ", ".join(repr(c) for c in classes)
    return (
        f"class{'' if one else 'es'} {names} {'has' if one else 'have'} no positive image in the {split} split: {what}"
    )


def warn_classes_without_positives(dataset: MultiLabelDataset, split: str) -> list[str]:
    """Log one warning line (``probmcl_med.data``) naming the classes of ``dataset`` without a positive image in
    ``split``; returns them."""
    missing = [c for c, p in zip(dataset.class_names, dataset.labels.sum(axis=0), strict=True) if p == 0]
    if missing:
        logger.warning("%s: %s", dataset.source, missing_classes_message(missing, split))
    return missing


def group_counts(dataset: MultiLabelDataset) -> dict[str, int] | None:
    """Rows per group (patient, slide) of a dataset whose items carry ``group``; None when they carry none."""
    groups = [item["group"] for item in dataset.items if "group" in item]
    if not groups:
        return None
    counts: dict[str, int] = {}
    for group in groups:
        counts[str(group)] = counts.get(str(group), 0) + 1
    return counts


def group_leaks(splits: dict[str, MultiLabelDataset]) -> list[dict[str, Any]]:
    """Groups found in more than one split: ``[{"group", "splits": {split: rows}}]``, sorted by group.

    Patches of one patient in train and test inflate every test metric; an automatic grouped split never does this,
    a user's split column may.
    """
    where: dict[str, dict[str, int]] = {}
    for split, dataset in splits.items():
        for group, count in (group_counts(dataset) or {}).items():
            where.setdefault(group, {})[split] = count
    return [{"group": g, "splits": where[g]} for g in sorted(where) if len(where[g]) > 1]


def _try_read(dataset: MultiLabelDataset, index: int) -> tuple[int, tuple[int, int] | None, str | None]:
    item = dataset.items[index]
    try:
        pixels = read_any(item["image"], item.get("intensity", "dtype"))
    except DataError as err:
        return index, None, str(err)
    return index, (int(pixels.shape[0]), int(pixels.shape[1])), None


def check_dataset(
    dataset: MultiLabelDataset,
    sample: int | None = None,
    seed: int = 0,
    workers: int = 4,
    top_pairs: int = 10,
) -> dict[str, Any]:
    """Statistics of a dataset and the result of reading its images.

    Args:
        dataset: the dataset to check (its raw items are read; its transform is not used).
        sample: read only this many images, drawn without replacement with ``numpy.random.default_rng(seed)``;
            None reads every image.
        workers: threads reading images (decoding releases the GIL).
        top_pairs: how many co-occurring pairs to list.

    Returns:
        A JSON-ready dict: name, source, images, classes, class_names, groups (distinct ``group`` values of the
        items, None without groups), positives, label_cardinality,
        images_without_label, top_pairs, classes_without_positives, checked, unreadable (each ``{"index", "row",
        "file", "error"}``), image_sizes (min and max height/width seen), skipped_at_load (files a skip_bad dataset
        already dropped), ok.
    """
    n = len(dataset)
    if sample is not None and sample < n:
        indices = np.sort(np.random.default_rng(seed).choice(n, size=max(int(sample), 0), replace=False)).tolist()
    else:
        indices = list(range(n))
    unreadable: list[dict[str, Any]] = []
    heights: list[int] = []
    widths: list[int] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for index, shape, error in pool.map(lambda i: _try_read(dataset, i), indices):
            if error is not None:
                item = dataset.items[index]
                unreadable.append(
                    {
                        "index": index,
                        "row": item.get("row"),
                        "where": dataset.where(item),
                        "file": image_path_of(item["image"]),
                        "error": error,
                    }
                )
            elif shape is not None:
                heights.append(shape[0])
                widths.append(shape[1])
    stats = label_statistics(dataset.labels, dataset.class_names, top_pairs)
    groups = group_counts(dataset)
    sizes = (
        {"min_height": min(heights), "max_height": max(heights), "min_width": min(widths), "max_width": max(widths)}
        if heights
        else None
    )
    return {
        "name": dataset.name,
        "source": dataset.source,
        "images": n,
        "classes": dataset.num_classes,
        "class_names": list(dataset.class_names),
        "groups": None if groups is None else len(groups),
        **stats,
        "checked": len(indices),
        "sampled": len(indices) < n,
        "unreadable": unreadable,
        "image_sizes": sizes,
        "skipped_at_load": list(dataset.skipped),
        "mean": list(dataset.mean) if dataset.mean is not None else None,
        "std": list(dataset.std) if dataset.std is not None else None,
        "ok": not unreadable and not dataset.skipped,
    }
