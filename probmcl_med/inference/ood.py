"""Fit the out-of-distribution statistics of a saved model on its own training data, at the end of training.

:func:`fit_model_ood` reads ``RUN/model.pt``, rebuilds the training split and the validation split from the
bundle's dataset source (:func:`~probmcl_med.inference.splits.build_split_dataset`: the eval transform, no
augmentation), runs the encoder over them with the one shared loop (:func:`~probmcl_med.inference.loop.
predict_batches`), fits the statistics (:func:`~probmcl_med.core.ood.fit_statistics`) and stores them in the
bundle (:func:`~probmcl_med.bundle.add_ood_statistics`). At most :data:`MAX_TRAIN_IMAGES` training images are used
(a seeded random subset): the mean and a shrunk covariance settle long before that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from probmcl_med.bundle import add_ood_statistics, load_model_bundle, resolve_bundle_path
from probmcl_med.core.ood import OodStatistics, fit_statistics
from probmcl_med.errors import DataError
from probmcl_med.inference.inputs import prediction_batches
from probmcl_med.inference.loop import predict_batches
from probmcl_med.inference.splits import build_split_dataset

MAX_TRAIN_IMAGES = 10_000


def split_features(
    bundle: Any, split: str, device: torch.device, batch_size: int, workers: int, limit: int | None = None
) -> np.ndarray:
    """(N, H) float64: the features the head reads, for the split's readable images (a seeded subset of ``limit``)."""
    dataset = build_split_dataset(bundle, split)
    if limit is not None and len(dataset) > limit:
        chosen = np.sort(np.random.default_rng(0).choice(len(dataset), size=limit, replace=False))
        dataset = Subset(dataset, chosen.tolist())
    loader = prediction_batches(dataset, batch_size, workers, device)
    out = predict_batches(bundle.classifier(), loader, device, keep_features=True, allow_empty=True)
    if out.features is None or len(out.features) == 0:
        raise DataError(f"no readable image in the {split} split to fit the out-of-distribution statistics on")
    return out.features.double().numpy()


def fit_model_ood(
    model: str | Path,
    *,
    device: torch.device | None = None,
    batch_size: int = 64,
    workers: int = 0,
    max_train_images: int = MAX_TRAIN_IMAGES,
) -> OodStatistics:
    """Fit and store the out-of-distribution statistics of the model at ``model`` (a run folder or its model.pt).

    The threshold is calibrated on the validation split; a run without one calibrates on the training images
    themselves (``calibrated_on: train``), whose distances run smaller, so more inputs are flagged.

    Raises:
        CheckpointError: the bundle does not record its dataset.
        DataError: the training split cannot be read.
    """
    path = resolve_bundle_path(model)
    dev = device or torch.device("cpu")
    bundle = load_model_bundle(path, device=dev)
    train = split_features(bundle, "train", dev, batch_size, workers, max_train_images)
    try:
        held_out, split = split_features(bundle, "valid", dev, batch_size, workers), "valid"
    except DataError:
        held_out, split = train, "train"
    stats = fit_statistics(train, held_out, split)
    add_ood_statistics(path, stats)
    return stats
