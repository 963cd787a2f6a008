"""Is an input far from what the model was trained on? A feature-space distance, calibrated on held-out images.

Statistic: the Mahalanobis distance of the features the head reads, h(x) (H values), to the training set's mean,
under the training features' covariance (a class-agnostic version of Lee et al., "A Simple Unified Framework for
Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018):

    d(x) = sqrt( (h(x) - m)^T S^-1 (h(x) - m) )

with m the mean of N training features and S their covariance shrunk towards a scaled identity by the Ledoit-Wolf
rule (Ledoit & Wolf, J. Multivariate Analysis 2004, as in scikit-learn's ``ledoit_wolf``): S = (1 - s) C + s mu I,
C the empirical covariance (divided by N), mu = trace(C) / H and s in [0, 1] the closed-form shrinkage, so that S is
invertible also when H exceeds N. The inverse is kept as a whitening matrix W (H x H, W^T W = S^-1, from the
eigen-decomposition S = V diag(l) V^T: W = diag(l^-1/2) V^T), so d(x) = ||W (h(x) - m)||.

Calibration: the distances of a held-out split (the validation split; the training split itself when there is none,
which flags more often, since its own distances run small) give the threshold, their :data:`PERCENTILE` percentile:
about 1 in 100 images like the held-out ones is flagged by chance. Each input also gets the percentile of its
distance among the held-out ones. A slide is flagged when at least :data:`SLIDE_SHARE` of its patches are.

What it catches and what not (README, "Out of distribution"): inputs whose features lie far from the training
features (another stain, another organ, another kind of image, a blank or inked region, a resolution slip); not a
shift the encoder maps into the training features' cloud, nor a wrong label, nor a class never seen that looks like
a seen one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

PERCENTILE = 99.0
"""The held-out split's distance percentile above which an input is flagged (1 % false flags by design)."""
SLIDE_SHARE = 0.25
"""A slide is flagged when at least this share of its patches is (in distribution the share is about 1 %)."""
STATISTIC = (
    "Mahalanobis distance of the head's input features to the training mean, Ledoit-Wolf shrunk covariance "
    "(Lee et al., NeurIPS 2018; Ledoit & Wolf 2004)"
)


def ledoit_wolf(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean, Ledoit-Wolf shrunk covariance and shrinkage of (N, H) features (float64).

    The shrinkage is the closed form of scikit-learn's ``ledoit_wolf_shrinkage`` (features centred first):
    beta = (sum_ij (X^2)^T X^2 / N - ||X^T X||_F^2 / N^2) / (H N), delta = (||X^T X||_F^2 / N^2 - 2 mu tr(C) +
    H mu^2) / H, s = min(beta, delta) / delta (0 when beta is 0).
    """
    x = np.asarray(features, dtype=np.float64)
    n, h = x.shape
    mean = x.mean(axis=0)
    x = x - mean
    cov = x.T @ x / n
    mu = float(np.trace(cov)) / h
    x2 = x**2
    beta_ = float(np.sum(x2.T @ x2))
    delta_ = float(np.sum((x.T @ x) ** 2)) / n**2
    beta = (beta_ / n - delta_) / (h * n)
    delta = (delta_ - 2.0 * mu * float(np.trace(cov)) + h * mu**2) / h
    beta = min(beta, delta)
    shrinkage = 0.0 if beta == 0 else beta / delta
    shrunk = (1.0 - shrinkage) * cov
    shrunk.flat[:: h + 1] += shrinkage * mu
    return mean, shrunk, shrinkage


def whitening(covariance: np.ndarray) -> np.ndarray:
    """W with W^T W = covariance^-1: diag(l^-1/2) V^T from the eigen-decomposition (eigenvalues floored at 1e-12
    of the largest, so a singular direction does not explode)."""
    values, vectors = np.linalg.eigh(covariance)
    values = np.maximum(values, 1e-12 * max(float(values.max()), 1e-300))
    return (vectors / np.sqrt(values)).T


@dataclass(frozen=True)
class OodStatistics:
    """The training features' statistics and their calibration: what ``model.pt`` keeps under ``ood``.

    Attributes:
        mean: (H,) training feature mean.
        whitening: (H, H) W, W^T W = S^-1.
        threshold: the calibration distances' :attr:`percentile` percentile; a larger distance is flagged.
        percentile: the calibration percentile (99).
        quantiles: (101,) the calibration distances at 0, 1, ..., 100 %.
        calibrated_on: ``valid``, or ``train`` when the run had no validation split.
        train_images: N, the training images the statistics come from.
        calibration_images: the images the threshold comes from.
        shrinkage: the Ledoit-Wolf shrinkage s.
    """

    mean: np.ndarray
    whitening: np.ndarray
    threshold: float
    percentile: float
    quantiles: np.ndarray
    calibrated_on: str
    train_images: int
    calibration_images: int
    shrinkage: float

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """(B,) float32 distances of (B, H) features, computed on the features' device."""
        w = torch.as_tensor(self.whitening, dtype=torch.float32, device=features.device)
        m = torch.as_tensor(self.mean, dtype=torch.float32, device=features.device)
        return torch.linalg.vector_norm((features.float() - m) @ w.T, dim=1)

    def percentile_of(self, distances: np.ndarray) -> np.ndarray:
        """Percent of the calibration images with a smaller distance (interpolated in the stored quantiles)."""
        return np.interp(np.asarray(distances, np.float64), self.quantiles, np.arange(self.quantiles.size))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``model.pt`` (tensors and numbers: loadable with ``torch.load(weights_only=True)``)."""
        return {
            "statistic": STATISTIC,
            "mean": torch.as_tensor(self.mean, dtype=torch.float32),
            "whitening": torch.as_tensor(self.whitening, dtype=torch.float32),
            "threshold": float(self.threshold),
            "percentile": float(self.percentile),
            "quantiles": torch.as_tensor(self.quantiles, dtype=torch.float64),
            "calibrated_on": self.calibrated_on,
            "train_images": int(self.train_images),
            "calibration_images": int(self.calibration_images),
            "shrinkage": float(self.shrinkage),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OodStatistics:
        return cls(
            mean=np.asarray(data["mean"], dtype=np.float64),
            whitening=np.asarray(data["whitening"], dtype=np.float64),
            threshold=float(data["threshold"]),
            percentile=float(data["percentile"]),
            quantiles=np.asarray(data["quantiles"], dtype=np.float64),
            calibrated_on=str(data["calibrated_on"]),
            train_images=int(data["train_images"]),
            calibration_images=int(data["calibration_images"]),
            shrinkage=float(data["shrinkage"]),
        )


def fit_statistics(
    train_features: np.ndarray, calibration_features: np.ndarray, calibrated_on: str, percentile: float = PERCENTILE
) -> OodStatistics:
    """Fit the training statistics and calibrate the threshold (see the module docstring).

    Args:
        train_features: (N, H) features of training images.
        calibration_features: (M, H) features of held-out images (the validation split).
        calibrated_on: the split the calibration features come from, for the record.
        percentile: the flagging percentile of the calibration distances.
    """
    mean, covariance, shrinkage = ledoit_wolf(train_features)
    w = whitening(covariance)
    stats = OodStatistics(mean, w, 0.0, percentile, np.zeros(101), calibrated_on, len(train_features), 0, shrinkage)
    d = stats.distances(torch.as_tensor(np.asarray(calibration_features), dtype=torch.float32)).double().numpy()
    return OodStatistics(
        mean, w, float(np.percentile(d, percentile)), percentile, np.percentile(d, np.arange(101)), calibrated_on,
        len(train_features), len(d), shrinkage,
    )  # fmt: skip


@dataclass(frozen=True)
class OodAssessment:
    """Per input of one prediction: the distance, its percentile among the calibration images, the flag.

    Attributes:
        distance: (N,) feature-space distances.
        percentile: (N,) percent of the calibration images closer to the training mean.
        flagged: (N,) True where the distance exceeds the threshold.
        threshold: the model's threshold.
        calibrated_on: the split it was calibrated on.
    """

    distance: np.ndarray
    percentile: np.ndarray
    flagged: np.ndarray
    threshold: float
    calibrated_on: str

    @property
    def share(self) -> float:
        """The share of the inputs flagged (0 when there are none)."""
        return float(self.flagged.mean()) if self.flagged.size else 0.0

    def summary(self, slide: bool) -> dict[str, Any]:
        """What meta.json and a cohort table say: counts, share, and for a slide the slide's flag."""
        out: dict[str, Any] = {
            "flagged": int(self.flagged.sum()),
            "inputs": int(self.flagged.size),
            "share": self.share,
            "threshold": self.threshold,
            "calibrated_on": self.calibrated_on,
            "rule": f"distance above the {PERCENTILE:g}th percentile of the {self.calibrated_on} split's",
            "statistic": STATISTIC,
        }
        if slide:
            out["slide_out_of_distribution"] = self.share >= SLIDE_SHARE
            out["slide_rule"] = f"at least {100 * SLIDE_SHARE:g} % of the patches flagged"
        return out


def describe(assessment: OodAssessment, slide: bool, units: str = "inputs") -> str:
    """One line on what the flag found, e.g. ``87 of 123 patches (71 %) lie far from the training images ...``."""
    n, k = assessment.flagged.size, int(assessment.flagged.sum())
    where = (
        f"beyond the {PERCENTILE:g}th percentile of the {assessment.calibrated_on} split's distances to the "
        "training features"
    )
    if k == 0:
        return f"out of distribution: none of the {n} {units} ({where})"
    line = (
        f"{k} of {n} {units} ({100 * k / n:.0f} %) lie far from the training images in feature space ({where}): "
        "the model was not trained on inputs like these, its probabilities there mean little"
    )
    if slide and assessment.share >= SLIDE_SHARE:
        line += f"; the slide as a whole is out of distribution (at least {100 * SLIDE_SHARE:g} % of its patches)"
    return line


def assess(stats: OodStatistics, distances: np.ndarray) -> OodAssessment:
    """Flag each distance against the calibrated threshold."""
    d = np.asarray(distances, dtype=np.float64)
    return OodAssessment(d, stats.percentile_of(d), d > stats.threshold, stats.threshold, stats.calibrated_on)
