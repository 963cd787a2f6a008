"""A split of the dataset a model was trained on, rebuilt from the bundle alone (for evaluate, compare and the
out-of-distribution statistics fitted at the end of training).

The bundle records where its training data came from (:class:`~probmcl_med.bundle.DatasetSource`: dataset name,
root, options, the run's split names); :func:`build_split_dataset` rebuilds a split with the bundle's deterministic
eval transform (its image size, stored normalisation and stain reference: the model is fed what it was trained on).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from probmcl_med.bundle import DatasetSource, ModelBundle
from probmcl_med.data.base import normalize_split
from probmcl_med.data.datasets import build_dataset
from probmcl_med.errors import CheckpointError
from probmcl_med.inference.inputs import eval_transform


def dataset_source(bundle: ModelBundle, checkpoint: Any = "checkpoint") -> DatasetSource:
    """Where the bundle's training data came from; a bundle that does not say is a one-line CheckpointError."""
    if bundle.dataset is None:
        raise CheckpointError(
            f"checkpoint {checkpoint} does not record the dataset it was trained on; evaluate saved predictions "
            "instead (probmcl-med predict, then evaluate --scores --targets)"
        )
    return bundle.dataset


def split_name(source: DatasetSource, split: str) -> str:
    """The dataset's own name for ``train``/``valid``/``test`` (the run's ``*_split`` settings; aliases accepted)."""
    return source.splits[normalize_split(split, where="--split")]


def check_classes(
    checkpoint_classes: Sequence[str], dataset_classes: Sequence[str], checkpoint: Any, source: Any
) -> None:
    """One-line CheckpointError unless the dataset has the checkpoint's classes in the checkpoint's order."""
    a, b = [str(c) for c in checkpoint_classes], [str(c) for c in dataset_classes]
    if a == b:
        return
    if len(a) != len(b):
        detail = f"{len(a)} classes vs {len(b)}"
    elif sorted(a) == sorted(b):
        detail = "the same classes in another order"
    else:
        i = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
        detail = f"class {i + 1} is {a[i]!r} in the checkpoint but {b[i]!r} in the dataset"
    missing = [c for c in a if c not in b][:3]
    hint = f" (not in the dataset: {', '.join(missing)})" if missing and len(a) != len(b) else ""
    raise CheckpointError(
        f"checkpoint {checkpoint} was trained on other classes than dataset {source}: {detail}{hint}; evaluate it on "
        "the dataset it was trained on"
    )


def build_split_dataset(bundle: Any, split: str, checkpoint: Any = "checkpoint", root: str | None = None) -> Any:
    """The bundle's dataset at ``split`` with the bundle's eval transform.

    Args:
        bundle: a loaded :class:`~probmcl_med.bundle.ModelBundle`.
        split: train, valid (val) or test.
        checkpoint: named in error messages.
        root: override of the stored ``dataset.root`` (the data moved since training).

    Raises:
        CheckpointError: the dataset's classes differ from the checkpoint's.
        DataError: the dataset cannot be read (missing folder, bad CSV, ...), from the dataset factory.
    """
    source = dataset_source(bundle, checkpoint)
    where = root if root is not None else source.root
    dataset = build_dataset(source.name, where, split_name(source, split), dict(source.options), source.skip_bad)
    check_classes(bundle.class_names, dataset.class_names, checkpoint, getattr(dataset, "source", source.name))
    dataset.transform = eval_transform(bundle)
    return dataset
