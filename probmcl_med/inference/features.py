"""The frozen-encoder feature cache: features computed once by the shared loop, then served as a dataset.

With a frozen encoder and no augmentation (``classifier.augment: false``, ``classifier.cache_features: true``) the
classifier stage trains its head on these instead of running the encoder every epoch (paper Sec. 3.3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from probmcl_med.errors import DataError
from probmcl_med.inference.loop import predict_batches
from probmcl_med.models.heads import Classifier


class FeatureDataset(Dataset):
    """Cached features: item ``i`` is ``{"features": (H,), "label": (C,)}``."""

    transform = None

    def __init__(self, features: Tensor, labels: Tensor) -> None:
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"features": self.features[index], "label": self.labels[index]}


def compute_features(
    classifier: Classifier,
    loader: Iterable[dict[str, Any] | None],
    device: torch.device,
    autocast: Callable[[], AbstractContextManager[Any]] | None = None,
) -> FeatureDataset:
    """The features the head reads, for a whole labelled loader: ((N, H) float32, (N, C) float32 labels) on CPU."""
    out = predict_batches(classifier, loader, device, autocast=autocast, keep_features=True)
    if out.features is None or out.targets is None:
        raise DataError("no readable labelled sample to compute features for")
    return FeatureDataset(out.features, torch.from_numpy(out.targets).float())
