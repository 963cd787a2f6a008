"""The gradient algebra the correlation similarity's two backends share (docs/math.md section 4): the torch backend
(:mod:`probmcl_med.core.similarities`) and the fused Triton kernels (:mod:`probmcl_med.core.triton_correlation`) both
reduce a tile to the sums of ``Q``, ``Q u`` and ``Q (u^2 - 1/s)`` and turn them into gradients here, so the two
cannot drift apart (and neither imports the other for it).
"""

from __future__ import annotations

import torch
from torch import Tensor


def side_grads(sq: Tensor, squ: Tensor, squv: Tensor, v: Tensor, n: int, sign: float) -> tuple[Tensor, ...]:
    """Gradients (w, mu, var) of one side from the reduced sums of Q, Qu, Q(u^2 - 1/s); ``sign`` -1 for side a."""
    return sq, (sign * n) * squ, (0.5 * n) * squv + (0.25 * n) * sq / v


def fold_symmetric_grad(grad: Tensor) -> Tensor:
    """The upstream gradient of a symmetric ``logK_ij = f(theta_i, theta_j)`` folded onto the pairs a symmetric
    kernel evaluates: pair ``(i, j)``, ``i < j``, carries ``G_ij + G_ji`` to both of its samples; the diagonal pair
    carries ``G_ii`` to both of its (identical) sides; below the diagonal 0."""
    return torch.triu(grad + grad.T, diagonal=1) + torch.diag_embed(grad.diagonal())
