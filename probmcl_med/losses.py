"""The losses at their public path ``probmcl_med.losses``; the code is in :mod:`probmcl_med.core.losses` (the math
core)."""

from __future__ import annotations

from probmcl_med.core.losses import (
    CLASSIFICATION_LOSSES,
    AsymmetricLoss,
    ContrastiveStats,
    ObjectiveOutput,
    ProbContrastiveLoss,
    ProbMCLObjective,
    classification_loss,
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
