"""Frozen-encoder features for the classifier stage and evaluate: from the disk cache when its key matches, else
computed once into it (:mod:`probmcl_med.inference.feature_cache`).

With a frozen encoder and no augmentation (``classifier.augment: false``) the
classifier stage trains its head on these instead of running the encoder every epoch (paper Sec. 3.3); a later run,
a sweep point or ``evaluate`` of such a model with the same encoder, preprocessing and files reads them back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from probmcl_med.data.base import make_loader
from probmcl_med.inference.feature_cache import CachedFeatures, FeatureCache, cache_key
from probmcl_med.inference.loop import ProgressHook
from probmcl_med.models.heads import Classifier


@dataclass(frozen=True)
class Preprocessing:
    """The deterministic preprocessing the features were computed under (part of the cache key).

    Attributes:
        image_size: side of the network input, pixels.
        mean: per-channel normalisation mean (0-1 scale), or None.
        std: per-channel normalisation std, or None.
        stain_reference: the Macenko reference as a plain dict, or None.
    """

    image_size: int
    mean: Sequence[float] | None
    std: Sequence[float] | None
    stain_reference: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class EncoderIdentity:
    """The encoder as configured: its ENCODERS/timm name and options (pooling lives there)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)


class ConsoleBar:
    """A :class:`~probmcl_med.inference.loop.ProgressHook`: a rich bar on a terminal console, else one line at the
    start and one at the end (none when ``console`` is None or ``PROBMCL_MED_NO_PROGRESS=1`` without a console)."""

    def __init__(self, console: Console | None) -> None:
        self.console = console
        live = (
            console is not None and console.is_terminal and os.environ.get("PROBMCL_MED_NO_PROGRESS", "") in ("", "0")
        )
        self.progress = (
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            if live
            else None
        )
        self.task: Any = None
        self.total = 0
        self.done = 0

    def start(self, description: str, total: int) -> None:
        self.total, self.done = total, 0
        if self.progress is not None:
            self.progress.start()
            self.task = self.progress.add_task(description, total=total)
        elif self.console is not None:
            self.console.print(f"{description}: {total} images", highlight=False)

    def advance(self, count: int) -> None:
        self.done += count
        if self.progress is not None:
            self.progress.advance(self.task, count)
            if self.done >= self.total:
                self.progress.stop()


def cached_features(
    classifier: Classifier,
    dataset: Any,
    *,
    encoder: EncoderIdentity,
    preprocessing: Preprocessing,
    batch_size: int,
    device: torch.device,
    workers: int = 0,
    autocast: Callable[[], AbstractContextManager[Any]] | None = None,
    progress: ProgressHook | None = None,
    root: Path | None = None,
    precision: str = "float32",
) -> CachedFeatures:
    """The features the head reads (``classifier.embed``) for every sample of ``dataset``, from the disk cache.

    Args:
        classifier: the frozen encoder + head (its ``normalize_features`` is part of the key).
        dataset: the split with its deterministic (evaluation) transform set.
        encoder: the encoder's configured name and options.
        preprocessing: the settings the transform was built from.
        batch_size: images per forward pass when features must be computed.
        device: where the encoder runs.
        workers: DataLoader workers of the build.
        autocast: the forward pass's AMP context, or None.
        progress: a progress hook for the build (nothing is computed on a cache hit).
        root: the cache folder (default ``$PROBMCL_MED_CACHE/features``).
        precision: the dtype ``autocast`` runs the forward pass in (``float32`` without AMP): part of the key.

    Returns:
        A dataset of ``{"features": (H,), "label": (C,), "index"}`` over the readable samples, memory-mapped.
    """
    key = cache_key(
        encoder=classifier.encoder,
        encoder_name=encoder.name,
        encoder_options=encoder.options,
        normalize_features=classifier.normalize_features,
        dataset=dataset,
        image_size=preprocessing.image_size,
        mean=preprocessing.mean,
        std=preprocessing.std,
        stain_reference=preprocessing.stain_reference,
        precision=precision,
    )
    cache = FeatureCache(key, root)
    if cache.complete():
        return cache.open(dataset.labels)
    return cache.build(
        classifier.embed,
        dataset,
        batch_size=batch_size,
        device=device,
        workers=workers,
        autocast=autocast,
        progress=progress,
        module=classifier,
    )


def feature_batches(
    bundle: Any,
    dataset: Any,
    batch_size: int,
    device: torch.device,
    workers: int = 0,
    progress: ProgressHook | None = None,
) -> Any:
    """Batches of ``{"features", "label", "index"}`` for a saved model whose head trained on cached features
    (``bundle.feature_cache``): read from the cache the training run filled (computed into it once on a miss, e.g. the
    test split), under the model's own encoder, options and preprocessing. Scoring then runs the head alone.
    """
    bundle.to(device)
    source = cached_features(
        bundle.classifier(),
        dataset,
        encoder=EncoderIdentity(bundle.encoder_name, dict(bundle.encoder_options)),
        preprocessing=Preprocessing(bundle.image_size, bundle.mean, bundle.std, bundle.stain_reference),
        batch_size=batch_size,
        device=device,
        workers=workers,
        progress=progress,
    )
    return make_loader(source, batch_size)
