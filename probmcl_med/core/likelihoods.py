"""Negative log-likelihood terms ``L_NLL`` of the paper's Eq. 2, two readings (docs/math.md section 3).

Each registered entry is ``f(mixture: GaussianMixture, z (B, n), labels (B, C)) -> scalar``, the MEAN over the batch
(the paper writes a sum; a mean keeps ``lambda`` meaningful across batch sizes, and L_PCL is a mean too). Computed in
float32 (float64 for float64 inputs) in the log domain; half-precision inputs are cast up.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from probmcl_med.core.mixture import GaussianMixture, compute_dtype
from probmcl_med.registry import LIKELIHOODS


def component_log_densities(mixture: GaussianMixture, z: Tensor) -> Tensor:
    """``log pi_k + log N(z; m_k, var_k I_n)`` for every sample and component, ``(B, C)`` (docs/math.md s.2).

    ``m_k = mu_k 1`` (the paper), ``mu_k sqrt(n) u_k`` when the mixture has learned mean directions (s.2b), or block
    means (s.2c). ``||z - m_k||^2`` is formed as two non-negative parts (:meth:`GaussianMixture.squared_distances`;
    for the diagonal ``||z - zbar 1||^2 + n (zbar - mu)^2``), which has no cancellation even for ``|mu| = 1e3``.

    Raises:
        ValueError: when ``z`` is not ``(len(mixture), mixture.dim)``.
    """
    n = mixture.dim
    if z.ndim != 2 or z.shape[0] != len(mixture) or z.shape[1] != n:
        raise ValueError(f"z must be (B, n) = ({len(mixture)}, {n}), got {tuple(z.shape)}")
    dtype = compute_dtype(z, mixture.weights, mixture.means, mixture.variances)
    z = z.to(dtype)
    var = mixture.variances.to(dtype)
    sq_dist = mixture.squared_distances(z, dtype)
    log_normal = -0.5 * n * torch.log(2 * math.pi * var) - 0.5 * sq_dist / var
    return mixture.log_weights.to(dtype) + log_normal


def graph_zero(*tensors: Tensor) -> Tensor:
    """A scalar 0 connected to the graph of ``tensors`` (backward works and gives zero gradients)."""
    return sum((t.sum() * 0.0 for t in tensors), start=torch.zeros((), device=tensors[0].device))


@LIKELIHOODS.register("density")
def density_nll(mixture: GaussianMixture, z: Tensor, labels: Tensor | None = None) -> Tensor:
    """Mean of ``-log sum_k pi_k N(z; mu_k 1, var_k I_n)``: the paper's Eq. 2 read literally (docs/math.md s.3).

    With ``z = h(x)`` (the KMCL reading, ``n = H``) this term pulls ``h`` toward the diagonal direction; only the
    contrastive term pushes back. ``labels`` are not used (accepted for the common signature).

    Returns:
        A scalar, the mean over the batch (0 connected to the graph for an empty batch).
    """
    logp = component_log_densities(mixture, z)
    if logp.shape[0] == 0:
        return graph_zero(logp)
    return -torch.logsumexp(logp, dim=1).mean()


@LIKELIHOODS.register("responsibility")
def responsibility_nll(mixture: GaussianMixture, z: Tensor, labels: Tensor) -> Tensor:
    """Mean of ``-log(sum_{k: y_k = 1} pi_k N_k(z) / sum_k pi_k N_k(z))``: the label-aware KMCL reading (math.md s.3).

    The posterior probability that ``z`` came from one of the sample's true classes. A class counts as positive when
    its label is >= 0.5 (soft labels are thresholded). Samples with no positive label are skipped; if none has one
    the result is a 0 that still backpropagates. Unlike the KMCL code there is no sigmoid on pi, no dropped constant
    and no clamp at 1e-38 (0 in fp16, a NaN source): a plain log-sum-exp difference.

    Returns:
        A scalar, the mean over the samples that have at least one positive label.
    """
    logp = component_log_densities(mixture, z)
    if labels.shape != logp.shape:
        raise ValueError(f"labels must be (B, C) = {tuple(logp.shape)}, got {tuple(labels.shape)}")
    positive = labels.to(logp.device) >= 0.5
    valid = positive.any(dim=1)
    if not bool(valid.any()):
        return graph_zero(logp)
    logp, positive = logp[valid], positive[valid]  # rows without a positive would give -inf and NaN gradients
    log_pos = torch.logsumexp(logp.masked_fill(~positive, -math.inf), dim=1)
    return (torch.logsumexp(logp, dim=1) - log_pos).mean()


__all__ = ["component_log_densities", "density_nll", "graph_zero", "responsibility_nll"]
