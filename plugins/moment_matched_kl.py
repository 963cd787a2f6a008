"""Worked plugin example: a new mixture similarity, registered from a file in plugins/.

Drop a file like this into ``./plugins`` (or any folder given with ``--plugins-dir`` or ``PROBMCL_MED_PLUGINS``) and
use it by name: ``probmcl-med train --dataset demo --set contrastive.similarity=moment_kl``.

The similarity: collapse each mixture to the isotropic Gaussian with the same mean and total variance (moment
matching), then map their symmetric Kullback-Leibler divergence, per dimension, to (0, 1]::

    m = sum_k pi_k mu_k                                 (mean of every coordinate)
    v = sum_k pi_k (var_k + mu_k^2) - m^2               (variance of every coordinate)
    KL(p || q) / n = ( v_p / v_q - 1 + log(v_q / v_p) + (m_p - m_q)^2 / v_q ) / 2
    sim(p, q) = exp( -(KL(p || q) + KL(q || p)) / (2 n) )        (the divergence of one coordinate)

It is cheap (O(B M)), symmetric, equal to 1 when the moments agree and blind to anything beyond the first two
moments: a deliberately simple contrast to the exact ``correlation``. It is an example of the plugin contract, not
a recommendation.
"""

from __future__ import annotations

import torch

from probmcl_med import SIMILARITIES, GaussianMixture


def _moments(m: GaussianMixture) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean and variance of one coordinate of z, shapes (B,), in float32 or wider."""
    dtype = torch.promote_types(m.weights.dtype, torch.float32)
    w, mu, var = m.weights.to(dtype), m.means.to(dtype), m.variances.to(dtype)
    mean = (w * mu).sum(dim=1)
    second = (w * (var + mu.square())).sum(dim=1)
    return mean, (second - mean.square()).clamp_min(torch.finfo(dtype).tiny)


@SIMILARITIES.register("moment_kl")
def moment_kl_similarity(a: GaussianMixture, b: GaussianMixture) -> torch.Tensor:
    """Moment-matched Gaussians compared by exp(-symmetric KL per dimension): a cheap example plugin."""
    a.require_diagonal_means("moment_kl")  # its moments assume component means mu_k 1
    ma, va = _moments(a)
    mb, vb = _moments(b)
    va_, vb_ = va[:, None], vb[None, :]
    diff2 = (ma[:, None] - mb[None, :]).square()
    kl_ab = 0.5 * (va_ / vb_ - 1 + torch.log(vb_ / va_) + diff2 / vb_)
    kl_ba = 0.5 * (vb_ / va_ - 1 + torch.log(va_ / vb_) + diff2 / va_)
    return torch.exp(-0.5 * (kl_ab + kl_ba))
