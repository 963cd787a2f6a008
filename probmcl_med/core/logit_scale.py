"""A learnable, bounded temperature for the contrastive loss (docs/math.md s.7c, ``contrastive.tau_learnable``).

The loss divides similarities by ``tau`` (paper Eq. 3); here ``1 / tau`` is a logit scale ``s`` learned with the
network, kept inside ``[1 / tau_max, 1 / tau_min]`` by a sigmoid (no clamp, so its gradient never jumps to 0):

    s(theta) = s_lo + (s_hi - s_lo) * sigmoid(gain * theta),     s_lo = 1 / tau_max,  s_hi = 1 / tau_min
    ds / dtheta = gain * (s_hi - s_lo) * sigmoid(.) * (1 - sigmoid(.))

``theta`` starts where ``s = 1 / tau`` (the configured temperature). ``gain``: Adam moves a parameter by about its
learning rate per step whatever the size of its gradient, so ``theta`` alone would move by ``lr`` per step (0.1 over
100 steps at lr 1e-3: the temperature would hardly move in a short run); ``gain`` makes ``gain * theta`` move that
many times faster. CLIP (Radford et al. 2021) learns its logit scale the same way, bounded at 100 (``tau_min``
0.01 here by default).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LogitScale(nn.Module):
    """``s = 1 / tau`` in ``[1 / tau_max, 1 / tau_min]``, learned; call it to get the 0-d float32 scale.

    Args:
        tau: the starting temperature, strictly inside ``(tau_min, tau_max)``.
        tau_min, tau_max: the bounds of the temperature (``0 < tau_min < tau_max``).
        gain: factor on the parameter (see the module docstring), > 0.
    """

    def __init__(self, tau: float, tau_min: float = 0.01, tau_max: float = 1.0, gain: float = 1.0) -> None:
        super().__init__()
        if not 0.0 < tau_min < tau < tau_max:
            raise ValueError(
                f"a learnable temperature needs 0 < tau_min < tau < tau_max, got {tau_min}, {tau}, {tau_max}"
            )
        if not gain > 0:
            raise ValueError(f"the learnable temperature's gain must be > 0, got {gain}")
        self.tau_init, self.tau_min, self.tau_max, self.gain = float(tau), float(tau_min), float(tau_max), float(gain)
        self.low, self.high = 1.0 / self.tau_max, 1.0 / self.tau_min
        fraction = (1.0 / tau - self.low) / (self.high - self.low)
        self.theta = nn.Parameter(torch.tensor(math.log(fraction / (1.0 - fraction)) / self.gain))

    def forward(self) -> Tensor:
        """The logit scale ``s`` (0-d, float32 or the parameter's dtype if float64)."""
        theta = self.theta if self.theta.dtype == torch.float64 else self.theta.float()
        return self.low + (self.high - self.low) * torch.sigmoid(self.gain * theta)

    @property
    def tau(self) -> float:
        """The current temperature ``1 / s`` (a float, for logs)."""
        with torch.no_grad():
            return float(1.0 / self())

    @property
    def spec(self) -> dict[str, float]:
        """Constructor arguments for a checkpoint (the starting ``tau``; the parameter holds the learned value)."""
        return {"tau": self.tau_init, "tau_min": self.tau_min, "tau_max": self.tau_max, "gain": self.gain}

    def extra_repr(self) -> str:
        return f"tau={self.tau:.4g}, tau_min={self.tau_min}, tau_max={self.tau_max}, gain={self.gain}"


__all__ = ["LogitScale"]
