"""A control for the stage-1 study (issue 10): supervised contrastive learning on the features, no mixtures.

Registered as a LIKELIHOOD so that it needs no change to the project: ``ProbMCLObjective`` calls a likelihood with
``(mixture, z, labels)`` where ``z`` is the encoder's unit-norm feature ``h`` of the ``2N`` views. This one ignores the
mixture and returns the contrastive loss of Eq. 3 with the SAME positives, overlap weights and temperature as the
ProbMCL term (Jaccard >= alpha, D_ij multiplying the log term, tau), but with the cosine similarity ``h_i . h_j``
instead of a similarity between mixtures: a multi-label SupCon (Khosla et al. 2020). Run it with
``contrastive.lambda=0`` so that it is the whole stage-1 objective; alpha and tau are read from the environment
(``SUPCON_ALPHA``, ``SUPCON_TAU``; default the paper's 0.5 and 0.2).

    PROBMCL_MED_PLUGINS=benchmarks/evidence/plugins probmcl-med train ... \\
        --set contrastive.likelihood=supcon_features --set contrastive.lambda=0
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from probmcl_med import LIKELIHOODS, OVERLAPS, GaussianMixture
from probmcl_med.losses import contrastive_anchor_losses


@LIKELIHOODS.register("supcon_features")
def supcon_features(mixture: GaussianMixture, z: Tensor, labels: Tensor) -> Tensor:
    """Multi-label SupCon on the unit-norm features (cosine similarity), the PCL's positives and weights."""
    alpha = float(os.environ.get("SUPCON_ALPHA", "0.5"))
    tau = float(os.environ.get("SUPCON_TAU", "0.2"))
    h = torch.nn.functional.normalize(z.float(), dim=1)
    sim = h @ h.T
    overlap = OVERLAPS.get("jaccard")(labels.float(), labels.float())
    losses, valid = contrastive_anchor_losses(sim, overlap, torch.arange(len(h), device=h.device), alpha, tau)
    if not bool(valid.any()):
        return sim.sum() * 0.0
    return losses[valid].mean()
