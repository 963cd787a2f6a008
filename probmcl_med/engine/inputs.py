"""What every stage of a run starts from, built once from the keys every mode reads: the encoder, the datasets, the
class names, the normalisation, the stain reference and the input's microns per pixel.

A stage never changes these: it takes a *view* of a dataset with its own transform (:meth:`RunInputs.view`) and
trains the encoder module it is handed (the one object the stages of a mode pass on, on purpose).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from probmcl_med.config import RunBase
from probmcl_med.data.checks import warn_classes_without_positives
from probmcl_med.data.datasets import build_dataset
from probmcl_med.data.mpp import input_mpp
from probmcl_med.data.normalization import Normalization, resolve_normalization
from probmcl_med.data.stain import fit_reference
from probmcl_med.data.transforms import TwoViews, build_eval_transform, build_train_transform
from probmcl_med.errors import ConfigError, DataError
from probmcl_med.models.encoders import get_encoder


@dataclass(frozen=True)
class RunInputs:
    """The encoder and the data of a run (see the module docstring).

    Attributes:
        config: the run's config (its common keys are what this object was built from).
        encoder: the encoder module on the run's device, ``encoder(x) -> (B, H)`` raw pooled features.
        encoder_fwd: what the forward passes call: the encoder, or its ``torch.compile`` (``compile: true``).
        train_ds: the training split, without a transform.
        val_ds: the validation split, or None when the dataset has none.
        class_names: the C class names, in label order.
        normalization: the mean/std the images are normalised with, and where it came from.
        stain: the Macenko stain reference (a plain dict), or None.
        input_mpp: microns per pixel of the network input, or None.
    """

    config: RunBase
    encoder: nn.Module
    encoder_fwd: nn.Module
    train_ds: Any
    val_ds: Any
    class_names: list[str]
    normalization: Normalization
    stain: dict[str, Any] | None
    input_mpp: float | None

    @classmethod
    def build(cls, config: RunBase, device: torch.device) -> RunInputs:
        """Build the encoder (on ``device``) and the datasets of ``config``.

        Raises:
            ConfigError, DataError, CheckpointError: a bad encoder, dataset, or weights file (one line each).
        """
        e, d = config.encoder, config.dataset
        encoder = get_encoder(e.name, pretrained=e.pretrained, weights=e.weights, **dict(e.options)).to(device)
        encoder_fwd = torch.compile(encoder) if config.compile else encoder
        # skip_bad goes into the factory: files missing at build time are dropped and counted there, not fatal.
        train_ds = build_dataset(d.name, d.root, d.train_split, d.options, d.skip_bad)
        class_names = list(train_ds.class_names)
        val_ds = None
        try:
            val_ds = build_dataset(d.name, d.root, d.val_split, d.options, d.skip_bad)
        except DataError as exc:  # a dataset without a validation split: keep the last epoch instead of the best
            warnings.warn(
                f"no validation split ({exc}): no best epoch (the classifier keeps its last), no calibration and no "
                "tuned thresholds (both are fitted on it); hold some rows out with a split column's 'valid' rows or, "
                "without one, --set dataset.options.valid_fraction=0.1",
                RuntimeWarning,
                2,
            )
        if val_ds is not None and list(val_ds.class_names) != class_names:
            raise ConfigError(f"dataset {d.name}: the {d.val_split} split has other classes than {d.train_split}")
        mean, std = encoder.normalization
        normalization = resolve_normalization(d.normalization, mean, std, dataset=train_ds)
        # fitted once here; the same reference goes into model.pt for evaluate and predict
        stain = fit_reference(d.stain_normalize, method=d.stain_method).to_dict() if d.stain_normalize else None
        mpp = input_mpp(d.name, d.options, d.image_size, d.mpp)
        return cls(config, encoder, encoder_fwd, train_ds, val_ds, class_names, normalization, stain, mpp)

    def warn_classes_without_positives(self) -> None:
        """One warning line per split (train, valid) naming its classes without a positive image
        (:func:`probmcl_med.data.checks.warn_classes_without_positives`)."""
        warn_classes_without_positives(self.train_ds, "train")
        if self.val_ds is not None:
            warn_classes_without_positives(self.val_ds, "valid")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The per-channel mean and std the images are normalised with (identity when ``normalization: none``)."""
        n = self.normalization
        return (n.mean or (0.0, 0.0, 0.0), n.std or (1.0, 1.0, 1.0))

    def train_transform(self) -> Any:
        """The augmented training transform (``dataset.augment``) at the image size, normalised."""
        d = self.config.dataset
        return build_train_transform(d.image_size, *self.mean_std, **d.augment.model_dump(), stain=self.stain)

    def eval_transform(self) -> Any:
        """The deterministic transform (load, stain normalisation when configured, resize, normalise)."""
        return build_eval_transform(self.config.dataset.image_size, *self.mean_std, self.stain)

    def two_views(self) -> Any:
        """Two independently augmented views of each image (the contrastive objective's input)."""
        return TwoViews(self.train_transform())

    @staticmethod
    def view(dataset: Any, transform: Any) -> Any:
        """A shallow copy of ``dataset`` (the same items) that applies ``transform``; ``dataset`` is left as it is."""
        out = copy.copy(dataset)
        out.transform = transform
        return out
