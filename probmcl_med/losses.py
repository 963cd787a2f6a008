"""The losses at their public path ``probmcl_med.losses``; the code is in :mod:`probmcl_med.core.losses` and
:mod:`probmcl_med.core.classification` (the math core)."""

from __future__ import annotations

from probmcl_med.core.classification import CLASSIFICATION_LOSSES, AsymmetricLoss, classification_loss
from probmcl_med.core.losses import (
    ContrastiveStats,
    ObjectiveOutput,
    ProbContrastiveLoss,
    ProbMCLObjective,
    contrastive_anchor_losses,
)

__all__ = [
    "CLASSIFICATION_LOSSES",
    "AsymmetricLoss",
    "ContrastiveStats",
    "ObjectiveOutput",
    "ProbContrastiveLoss",
    "ProbMCLObjective",
    "classification_loss",
    "contrastive_anchor_losses",
]
