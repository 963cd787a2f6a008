"""Per-channel mean/std: the ImageNet defaults, ADP's own, and a function that measures them on a dataset.

The normalisation a model was trained with must travel with its checkpoint (a reproduction failure in the ASL
repository came from exactly that mismatch): :func:`resolve_normalization` returns a :class:`Normalization` whose
``to_dict()`` the checkpoint stores, with ``source`` saying where the numbers came from.

ADP values: the ADP release itself (Hosseini et al., CVPR 2019) does not publish a mean/std. The numbers below are the
ones the ADP authors' group uses in HistoKT (github.com/mahdihosseini/HistoKT,
``src/adas/image_transforms/custom_augmentations.py``, ``transformed_norm_weights["ADP"]``), measured on ADP-Release1
patches at 1 um/px. If your copy of ADP differs (another resolution, a colour-normalised export), measure your own
with :func:`compute_mean_std`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from probmcl_med.data.imageio import read_any, unit_range

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

ADP_MEAN: tuple[float, float, float] = (0.81233799, 0.64032477, 0.81902153)
ADP_STD: tuple[float, float, float] = (0.18129702, 0.25731668, 0.16800649)


@dataclass(frozen=True)
class Normalization:
    """Per-channel RGB mean and std on the 0-1 scale, and where they came from ("encoder", "dataset:adp", ...)."""

    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    source: str

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for checkpoints and configs."""
        return {
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        """Inverse of :meth:`to_dict`."""
        mean, std = data.get("mean"), data.get("std")
        return cls(
            tuple(float(m) for m in mean) if mean is not None else None,
            tuple(float(s) for s in std) if std is not None else None,
            str(data.get("source", "checkpoint")),
        )


def resolve_normalization(
    mode: str,
    encoder_mean: Sequence[float] | None = None,
    encoder_std: Sequence[float] | None = None,
    dataset: Any = None,
) -> Normalization:
    """The mean/std a run uses, per ``dataset.normalization`` in the config.

    Args:
        mode: "encoder" (the encoder's own, e.g. timm's pretrained config; ImageNet when it has none), "dataset"
            (the dataset's ``mean``/``std``, e.g. ADP's; the encoder's when the dataset has none), or "none" (pixels
            scaled to 0-1 only).
        encoder_mean, encoder_std: the encoder's normalisation, if it declares one.
        dataset: a MultiLabelDataset (its ``mean``, ``std`` and ``name`` are read).
    """
    enc = Normalization(
        tuple(encoder_mean) if encoder_mean is not None else IMAGENET_MEAN,
        tuple(encoder_std) if encoder_std is not None else IMAGENET_STD,
        "encoder" if encoder_mean is not None else "imagenet",
    )
    if mode == "none":
        return Normalization(None, None, "none")
    if mode == "dataset":
        mean, std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
        if mean is not None and std is not None:
            return Normalization(tuple(mean), tuple(std), f"dataset:{getattr(dataset, 'name', 'dataset')}")
        return enc
    return enc


def compute_mean_std(dataset: Any, max_images: int = 500, seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the RGB pixels (0-1 scale) over a random sample of a dataset's images.

    The pixels are read with the dataset's raw loader (no transform) from up to ``max_images`` images drawn without
    replacement with ``numpy.random.default_rng(seed)``. Each image's mean and variance are taken in float64 (two
    passes) and combined by the law of total variance, Var = E[Var_i] + Var[mean_i] weighted by pixel counts, which
    avoids the cancellation of E[x^2] - E[x]^2.

    Returns:
        (mean, std), each a tuple of 3 floats.
    """
    n = len(dataset)
    order = np.random.default_rng(seed).permutation(n)[: min(max_images, n)]
    counts, means, variances = [], [], []
    for index in order:
        item = dataset.items[int(index)]
        pixels = unit_range(read_any(item["image"], item.get("intensity", "dtype"))).reshape(-1, 3)
        counts.append(pixels.shape[0])
        means.append(pixels.mean(axis=0))
        variances.append(pixels.var(axis=0))
    w = np.asarray(counts, dtype=np.float64)[:, None] / float(sum(counts))
    image_means, image_vars = np.asarray(means), np.asarray(variances)
    mean = (w * image_means).sum(axis=0)
    std = np.sqrt((w * (image_vars + (image_means - mean) ** 2)).sum(axis=0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
