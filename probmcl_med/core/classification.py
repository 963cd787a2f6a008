"""The classifier's multi-label losses: the asymmetric loss of Ridnik et al. (ASL, 2021) and the two it contains,
binary cross-entropy and the focal loss, made exact in docs/math.md section 9.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probmcl_med.core.mixture import compute_dtype
from probmcl_med.errors import ConfigError


class AsymmetricLoss(nn.Module):
    """Asymmetric loss for multi-label classification (Ridnik et al., ICCV 2021), published semantics (math.md s.9).

    With ``p = sigmoid(x)``, ``p_neg = min(1 - p + clip, 1)`` (no shift when ``clip = 0``),
    ``pt = p y + p_neg (1 - y)`` and ``w = (1 - pt)^(gamma_pos y + gamma_neg (1 - y))``:

        ``loss = -[y log(max(p, eps)) + (1 - y) log(max(p_neg, eps))] * w``

    The same formula covers binary cross-entropy (``gamma_neg = gamma_pos = clip = 0``) and the focal loss of Lin
    et al. (``gamma_neg = gamma_pos = gamma``, ``clip = 0``, ``detach_weight=False``); :func:`classification_loss`
    builds the three by name. One deliberate difference from the published code: ``log p`` is ``logsigmoid(x)``
    and, without clipping, ``log(1 - p)`` is ``logsigmoid(-x)``, exact for any logit, where the original floors
    both at ``eps`` (which caps the loss of a confidently wrong logit, |x| > 18, at 18.4 and zeroes its gradient).
    With clipping ``p_neg >= clip > eps``, so the floor there never binds.

    By default ``w`` is computed from detached tensors (no gradient through the weight), as in the published ASL
    training, but locally: the original switches the global grad mode off and on, which re-enables gradients inside a
    caller's ``torch.no_grad()``. Computed in float32 (float64 for float64 logits), also under autocast.

    Args:
        gamma_neg, gamma_pos: focusing exponents (published: 4 and 0).
        clip: probability margin for negatives (published: 0.05).
        eps: floor of the probabilities inside the logs when clipping (published: 1e-8).
        reduction: ``"mean"`` (default): the sum divided by the number of elements ``B * C``; ``"sum"``: the
            original's return value; ``"none"``: the ``(B, C)`` elementwise losses.
        detach_weight: no gradient through ``w`` (ASL's published training); False differentiates through it (the
            focal loss as Lin et al. define it).
    """

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        reduction: str = "mean",
        detach_weight: bool = True,
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ConfigError(f"ASL reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if gamma_neg < 0 or gamma_pos < 0 or not 0.0 <= clip < 1.0 or not eps > 0:
            raise ConfigError(
                f"ASL needs gamma_neg, gamma_pos >= 0, 0 <= clip < 1, eps > 0; got gamma_neg={gamma_neg}, "
                f"gamma_pos={gamma_pos}, clip={clip}, eps={eps}"
            )
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = float(gamma_neg), float(gamma_pos), float(clip), eps
        self.reduction = reduction
        self.detach_weight = bool(detach_weight)

    def extra_repr(self) -> str:
        return (
            f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, eps={self.eps}, "
            f"reduction={self.reduction!r}, detach_weight={self.detach_weight}"
        )

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Loss for ``(B, C)`` logits and ``(B, C)`` targets in [0, 1]; reduced as ``reduction`` says."""
        if logits.shape != targets.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have one shape")
        dtype = compute_dtype(logits)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            x = logits.to(dtype)
            y = targets.to(device=x.device, dtype=dtype)
            p = torch.sigmoid(x)
            log_pos = F.logsigmoid(x)
            if self.clip > 0:
                p_neg = (1.0 - p + self.clip).clamp(max=1.0)
                log_neg = torch.log(p_neg.clamp(min=self.eps))
            else:
                p_neg = 1.0 - p
                log_neg = F.logsigmoid(-x)
            loss = y * log_pos + (1.0 - y) * log_neg
            if self.gamma_neg > 0 or self.gamma_pos > 0:
                pt = p * y + p_neg * (1.0 - y)
                if self.detach_weight:
                    pt = pt.detach()
                exponent = self.gamma_pos * y + self.gamma_neg * (1.0 - y)
                loss = loss * torch.pow(1.0 - pt, exponent)
            loss = -loss
        if self.reduction == "sum":
            return loss.sum()
        if self.reduction == "mean":
            return loss.sum() / max(loss.numel(), 1)
        return loss


CLASSIFICATION_LOSSES = ("bce", "focal", "asl")
"""The names ``classifier.loss`` accepts."""


def classification_loss(
    name: str,
    *,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    focal_gamma: float = 2.0,
    reduction: str = "mean",
) -> AsymmetricLoss:
    """The multi-label loss called ``name``, as one :class:`AsymmetricLoss` with the matching parameters.

    - ``bce``: binary cross-entropy on the logits (no focusing, no clipping); the ASL authors' advice is to start here
      on data that is not highly imbalanced (Alibaba-MIIL/ASL issue 22).
    - ``focal``: the focal loss of Lin et al. (2017) without the alpha balance: ``(1 - pt)^focal_gamma`` on positives
      and negatives alike, differentiated through the weight.
    - ``asl``: the asymmetric loss with ``gamma_neg``, ``gamma_pos`` and ``clip`` (published: 4, 0, 0.05), the weight
      detached as in the published training.

    Raises:
        ConfigError: an unknown name.
    """
    if name == "bce":
        return AsymmetricLoss(gamma_neg=0.0, gamma_pos=0.0, clip=0.0, reduction=reduction)
    if name == "focal":
        return AsymmetricLoss(
            gamma_neg=focal_gamma, gamma_pos=focal_gamma, clip=0.0, reduction=reduction, detach_weight=False
        )
    if name == "asl":
        return AsymmetricLoss(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, reduction=reduction)
    raise ConfigError(f"classifier.loss {name!r}: use one of {', '.join(CLASSIFICATION_LOSSES)}")


__all__ = ["CLASSIFICATION_LOSSES", "AsymmetricLoss", "classification_loss"]
