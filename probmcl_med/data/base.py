"""The dataset type every factory returns: a list of ``{"image", "label"}`` dicts, class names and a transform.

A :class:`MultiLabelDataset` is what the engines, ``data check`` and the CLI see, whatever the source (ADP CSV, COCO
JSON, slide manifest, the user's own CSV, the embedded demo)::

    ds = DATASETS.get("csv")("/data/my_patches", split="train")
    ds.transform = build_train_transform(224, ds.mean or IMAGENET_MEAN, ds.std or IMAGENET_STD)
    loader = make_loader(ds, batch_size=64, shuffle=True, workers=2)

Items: ``image`` is a file path, a slide location ``{"path", "x", "y", "level", "size"}`` or an (H, W, 3) uint8
array; ``label`` is a float32 multi-hot vector (C,); ``row`` (optional) is where the item came from in its source
file, used in error messages.

Bad samples: without ``skip_bad`` a sample that cannot be read raises :class:`DataError` naming the file and the row.
With ``skip_bad`` it is logged on the ``probmcl_med.data`` logger, counted in :attr:`MultiLabelDataset.num_skipped`
(per process) and returned as None; :func:`collate_skip_none` drops the Nones and records how many it dropped in the
batch (``batch["skipped"]``), so the count reaches the main process even from DataLoader workers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from probmcl_med.data.imageio import missing_path_hint
from probmcl_med.errors import DataError

logger = logging.getLogger("probmcl_med.data")

SPLITS = ("train", "valid", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "val": "valid", "validation": "valid",
                  "test": "test", "testing": "test"}  # fmt: skip


def normalize_split(split: str, where: str = "dataset") -> str:
    """``train``/``valid``/``test`` (``val``, ``validation``, ``training``, ``testing`` accepted); else DataError."""
    key = str(split).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise DataError(f"{where}: unknown split {split!r}; use train, valid or test")
    return _SPLIT_ALIASES[key]


def seeded_split(
    n: int, split: str, seed: int = 0, valid_fraction: float = 0.1, test_fraction: float = 0.1
) -> np.ndarray:
    """Row indices of ``split`` in a seeded random partition of ``range(n)``.

    The permutation is ``numpy.random.default_rng(seed).permutation(n)``; its first ``round(n * test_fraction)``
    entries are test, the next ``round(n * valid_fraction)`` valid, the rest train. Sorted indices are returned.
    """
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise DataError(
            f"split fractions valid={valid_fraction}, test={test_fraction}: each must be in [0, 1) with a sum below 1"
        )
    perm = np.random.default_rng(seed).permutation(n)
    n_test = round(n * test_fraction)
    n_valid = round(n * valid_fraction)
    parts = {"test": perm[:n_test], "valid": perm[n_test : n_test + n_valid], "train": perm[n_test + n_valid :]}
    return np.sort(parts[normalize_split(split)])


def grouped_split(
    groups: Sequence[str], split: str, seed: int = 0, valid_fraction: float = 0.1, test_fraction: float = 0.1
) -> np.ndarray:
    """Row indices of ``split`` when whole groups (patients, slides) are assigned to splits, never divided.

    The distinct groups, sorted, are split by :func:`seeded_split` (so the fractions are fractions of groups, not of
    rows); every row goes where its group went. Sorted row indices are returned.
    """
    names = sorted(set(groups))
    chosen = {names[i] for i in seeded_split(len(names), split, seed, valid_fraction, test_fraction)}
    return np.array([i for i, g in enumerate(groups) if g in chosen], dtype=np.int64)


LABEL_SEPARATOR = "|"
"""Between class names in a labels cell: the csv dataset's ``labels`` column and predict's ``labels.csv``."""


def class_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a class name that round-trips through the project's files, or None when it can.

    Class names are written as CSV headers (``predictions.csv``), joined with :data:`LABEL_SEPARATOR` in
    ``labels.csv`` cells and read back with surrounding spaces stripped, so a name must not be empty, hold the
    separator or a line break, or start or end with a space.
    """
    if not name.strip():
        return "is empty"
    if LABEL_SEPARATOR in name:
        return f"holds '{LABEL_SEPARATOR}', the separator between class names in labels.csv files"
    if "\n" in name or "\r" in name:
        return "holds a line break"
    if name != name.strip():
        return "starts or ends with a space"
    return None


def image_path_of(image: Any) -> str | None:
    """The file behind an item's ``image`` (a path, or a slide location's ``path``), or None for arrays."""
    if isinstance(image, dict):
        return str(image.get("path"))
    if isinstance(image, (str, Path)):
        return str(image)
    return None


def find_data_error(exc: BaseException) -> DataError | None:
    """The DataError behind ``exc`` (MONAI's Compose re-raises transform errors as RuntimeError ``from`` them)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, DataError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class MultiLabelDataset(Dataset):
    """A multi-label dataset of dict items.

    Args:
        items: ``[{"image": path | slide location | array, "label": (C,) float32 multi-hot, "row": int?}, ...]``.
        class_names: the C class names, in label order.
        mean: the dataset's own per-channel mean (RGB, on the 0-1 scale), or None (use the encoder's).
        std: the dataset's own per-channel std, or None.
        transform: callable on an item dict (settable later: ``ds.transform = t``); None returns the raw item.
        name: short name for messages and reports ("adp", "csv", ...).
        source: the file the items were read from (CSV, JSON, manifest), named in error messages.
        row_label: how an item's ``row`` is described in messages; ``{row}`` and ``{line}`` (row + 2: the line in a
            CSV with a header) are filled in.
        skip_bad: skip unreadable samples (logged, counted, returned as None) instead of raising.
        check_files: check at construction that every image / slide file exists (a stat per file, no decoding).

    Raises:
        DataError: no items, labels of the wrong length, or (unless skip_bad) a missing file.
    """

    def __init__(
        self,
        items: Sequence[dict[str, Any]],
        class_names: Sequence[str],
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        name: str = "dataset",
        source: str | Path | None = None,
        row_label: str = "row {row} (line {line})",
        skip_bad: bool = False,
        check_files: bool = True,
    ) -> None:
        self.name = name
        self.source = str(source) if source is not None else name
        self.row_label = row_label
        self.class_names = [str(c) for c in class_names]
        self.mean = tuple(float(m) for m in mean) if mean is not None else None
        self.std = tuple(float(s) for s in std) if std is not None else None
        self.transform = transform
        self.prepared: Any = None  # pixels kept in memory (probmcl_med.data.cache.PreparedImages), or None
        self.skip_bad = skip_bad
        self.num_skipped = 0
        self.skipped: list[str] = []  # messages of the samples skipped in this process
        items = [dict(item) for item in items]
        if not items:
            raise DataError(
                f"{self.source}: the dataset '{name}' is empty (0 samples); check the split and the options"
            )
        if len(set(self.class_names)) != len(self.class_names):
            raise DataError(f"{self.source}: duplicate class names in {self.class_names}")
        for class_name in self.class_names:
            problem = class_name_problem(class_name)
            if problem is not None:
                raise DataError(
                    f"{self.source}: class name {class_name!r} {problem}, so predicted labels could not be read "
                    "back; rename the class"
                )
        num_classes = len(self.class_names)
        for item in items:
            label = np.asarray(item["label"], dtype=np.float32).reshape(-1)
            if label.shape != (num_classes,):
                raise DataError(
                    f"{self.where(item)}: label has {label.shape[0]} entries but there are {num_classes} classes"
                )
            item["label"] = label
        if check_files:
            items = self._drop_missing(items)
        self.items = items
        self.labels = np.stack([item["label"] for item in items]).astype(np.float32)

    # ----------------------------------------------------------------------------------------------------------------

    def where(self, item: dict[str, Any]) -> str:
        """``source, row N (line M)`` for an item (or just the source when the item has no row)."""
        row = item.get("row")
        if row is None:
            return self.source
        return f"{self.source}, " + self.row_label.format(row=row, line=int(row) + 2)

    def _drop_missing(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        missing = [
            (i, p) for i, item in enumerate(items) if (p := image_path_of(item["image"])) and not Path(p).is_file()
        ]
        if not missing:
            return items
        first_index, first_path = missing[0]
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        hint = missing_path_hint(first_path)
        message = f"{self.where(items[first_index])}: file {first_path} does not exist{more}{hint}"
        if not self.skip_bad:
            raise DataError(f"{message}; fix the paths or set dataset.skip_bad=true to skip missing files")
        for index, path in missing:
            logger.warning("skipping %s: file %s does not exist", self.where(items[index]), path)
        self.num_skipped += len(missing)
        self.skipped.extend(f"{self.where(items[i])}: file {p} does not exist" for i, p in missing)
        logger.warning("%s: skipped %d missing file(s) of %d", self.source, len(missing), len(items))
        gone = {i for i, _ in missing}
        kept = [item for i, item in enumerate(items) if i not in gone]
        if not kept:
            raise DataError(f"{self.source}: every file of the dataset '{self.name}' is missing ({first_path}, ...)")
        return kept

    # ----------------------------------------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """C, the number of classes."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        item = dict(self.items[index])
        if self.transform is None:
            return item
        if self.prepared is not None:  # decoded and resized once (probmcl_med.data.cache), if for this transform
            item = self.prepared.substitute(index, item, getattr(self.transform, "key", None))
        try:
            return self.transform(item)
        except Exception as exc:
            err = find_data_error(exc)
            if err is None:
                raise
            message = str(err)
            if item.get("row") is not None:
                message = f"{message} ({self.where(item)})"
            if self.skip_bad:
                self.num_skipped += 1
                self.skipped.append(message)
                logger.warning(
                    "skipping sample %d (%d skipped so far in this process): %s", index, self.num_skipped, message
                )
                return None
            raise DataError(f"{message}; set dataset.skip_bad=true to skip such files") from None

    def describe(self) -> dict[str, Any]:
        """Size, classes, positives per class and label cardinality (what ``data check`` prints first)."""
        positives = self.labels.sum(axis=0)
        per_image = self.labels.sum(axis=1)
        return {
            "name": self.name,
            "source": self.source,
            "images": len(self),
            "classes": self.num_classes,
            "class_names": list(self.class_names),
            "positives": {c: int(p) for c, p in zip(self.class_names, positives, strict=True)},
            "label_cardinality": float(per_image.mean()),
            "images_without_label": int((per_image == 0).sum()),
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
        }

    def __repr__(self) -> str:
        return f"MultiLabelDataset(name={self.name!r}, images={len(self)}, classes={self.num_classes})"


# ---------------------------------------------------------------------------------------------------------------------
# Loading batches
# ---------------------------------------------------------------------------------------------------------------------


def every_sample_skipped(dataset: Any, what: str = "split") -> DataError:
    """The error for a loader that yielded no sample at all because every one was unreadable (``skip_bad``)."""
    source = getattr(dataset, "source", None) or getattr(dataset, "name", "the dataset")
    return DataError(
        f"{source}: every sample of the {what} was unreadable and skipped (dataset.skip_bad); fix or remove the files "
        "named in the warnings above"
    )


def collate_skip_none(batch: list[Any]) -> Any:
    """``default_collate`` of the non-None items; dict batches get ``"skipped"``: a 0-d tensor, the Nones dropped.

    Returns None when every item of the batch was bad (a training loop should ``continue`` on a None batch).
    """
    kept = [item for item in batch if item is not None]
    skipped = len(batch) - len(kept)
    if skipped:  # each was reported by its dataset (a warning naming it), so this is only a debug note
        logger.debug("dropped %d unreadable sample(s) from a batch of %d", skipped, len(batch))
    if not kept:
        return None
    out = default_collate(kept)
    if isinstance(out, dict):
        out["skipped"] = torch.tensor(skipped, dtype=torch.int64)
    return out


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: gives each worker's random transforms their own seed.

    Without it every forked worker would start from the parent's copy of the transforms' random state and produce
    the same augmentations. The seed comes from the DataLoader's base seed (torch's RNG, which
    ``monai.utils.set_determinism`` seeds), so runs stay reproducible (MONAI's ``worker_init_fn``).
    """
    # MONAI imported here, not at the top: the dataset modules that build on this one are imported by every config
    # validation (the DATASETS registry), and `import monai` costs about 2.3x `import torch` (measured with
    # python -X importtime on the 2-core dev machine: torch 3.7 s, monai 8.8 s more, under load 11).
    from monai.data.utils import worker_init_fn

    worker_init_fn(worker_id)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    workers: int = 0,
    drop_last: bool = False,
    sampler: Any = None,
    device: torch.device | None = None,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """The one DataLoader of the package (training, validation, the feature cache, predict, evaluate): batches with
    :func:`collate_skip_none`, per-worker transform seeds, persistent workers, pinned memory when the batches go to a
    CUDA ``device``.

    Raises:
        DataError: a batch size below 1.
    """
    if batch_size < 1:
        raise DataError(f"batch size {batch_size}: give a positive number of images per batch")
    pin_memory = device is not None and torch.device(device).type == "cuda"
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skip_none,
        worker_init_fn=seed_worker if workers > 0 else None,
        persistent_workers=workers > 0,
        drop_last=drop_last,
        pin_memory=pin_memory,
        generator=generator,
    )
