"""The mixture density network (MDN) that turns an encoder feature into a Gaussian mixture (docs/math.md s.1).

Paper Section 2.1 and Fig. 1(c): a perceptron with two hidden layers (2048 and 128 units) and an output layer of 3C
numbers, split into mixture logits, means and variance pre-activations. It exists only for the contrastive stage.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probmcl_med.core.logit_scale import LogitScale
from probmcl_med.core.mixture import GaussianMixture

COVARIANCES = ("isotropic", "shared", "fixed")
"""Covariance choices (docs/math.md s.2d): ``isotropic`` (the paper: ``var_ik I``, one variance per component and
sample), ``shared`` (one variance per sample for all its components), ``fixed`` (one constant for every component and
sample: the mixture carries no learned spread)."""


class MixtureDensityNetwork(nn.Module):
    """``h (B, H) -> GaussianMixture`` with ``C`` isotropic components (paper Eq. 1, docs/math.md s.1).

    ``h -> Linear(H, 2048) -> ReLU -> Linear(2048, 128) -> ReLU -> Linear(128, 3C) -> (a_pi, a_mu, a_var)`` and

    * ``pi = softmax(a_pi)`` (the mixture also keeps ``log_softmax(a_pi)`` exactly),
    * ``mu = a_mu`` (component k's mean vector is ``mu_k * 1``),
    * ``var = ELU(a_var) + 2 >= 1``: the paper's "modified ELU ... minimum value of one" (ELU > -1).

    Deviations, each off by default (docs/math.md s.2c-2d): ``var = variance_floor + variance_scale * (ELU(a_var) +
    1)`` (floor and scale 1: the paper; both 0.1: components ten times sharper), ``covariance`` ``shared`` (``a_var``
    averaged over the components) or ``fixed`` (``var = variance_floor + variance_scale``, the paper's value at
    ``a_var = 0``), ``mean_dim`` ``d > 1`` (block means: ``a_mu`` has ``C d`` outputs, the output layer ``(2 + d) C``),
    and ``temperature`` (a :class:`~probmcl_med.core.logit_scale.LogitScale` kept here so that the optimiser, the
    checkpoints and DDP treat it as one of the network's parameters; the contrastive loss reads it).

    Initialisation of the output layer (paper Section 3.1: "uniformly initialized for mixture coefficients and mean
    vector weights, while covariance weights were set constant"):

    * rows of ``a_pi`` and ``a_mu``: weights ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (fan_in = last hidden width),
      biases 0;
    * rows of ``a_var``: every weight equal to ``var_weight_init``, bias 0. The paper says 1. With 128 ReLU inputs a
      weight of 1 makes ``a_var`` the SUM of the hidden activations, so the initial variances depend on the hidden
      width and the input scale (tens for typical activations). The default ``None`` uses ``1 / fan_in`` instead,
      which makes ``a_var`` their MEAN (initial variances near 2); pass ``var_weight_init=1.0`` for the paper's letter.

    Input standardisation (``input_norm="batch"``, a deviation from the paper, off by default): the unit-norm
    features of one encoder share a large common direction, so at initialisation the MDN sees nearly the same input
    for every image, outputs nearly the same mixture for every image, and every mixture similarity starts at ~1 (the
    contrastive term then has almost no gradient; benchmarks/evidence). ``"batch"`` standardises each feature over the
    batch before the first layer (``BatchNorm1d`` without affine parameters; running statistics at evaluation), so the
    MDN starts from sample-specific inputs. The density is still evaluated at the unstandardised ``h``.

    The hidden layers keep PyTorch's default initialisation. The whole head runs in float32 with autocast disabled,
    whatever the encoder's precision (docs/math.md: mixture math never in fp16/bf16).

    Args:
        in_features: ``H``, the width of the encoder feature.
        num_classes: ``C``, one component per class.
        latent_dim: ``n``, the dimension of the space ``z`` lives in; default ``H`` (``z = h(x)``, the KMCL reading).
        hidden: hidden layer widths, the paper's ``(2048, 128)``.
        var_weight_init: constant for the variance output weights; ``None`` means ``1 / hidden[-1]``.
        input_norm: ``"none"`` (the paper) or ``"batch"`` (standardise each input feature over the batch).
        mean_directions: learn one unit direction ``u_k`` in ``R^n`` per component (shared by every sample) along
            which component k's mean lies, ``mu_k sqrt(n) u_k`` (docs/math.md s.2b, a deviation); initialised at the
            diagonal ``1 / sqrt(n)``, i.e. at the paper's model.
        variance_floor, variance_scale: ``var = floor + scale * (ELU(a_var) + 1)``, both > 0 (1 and 1: the paper).
        covariance: one of :data:`COVARIANCES`.
        mean_dim: ``d``, numbers per component mean (1: the paper; ``d > 1``: block means, docs/math.md s.2c).
        temperature: ``None``, or the :class:`~probmcl_med.core.logit_scale.LogitScale` arguments (``tau``,
            ``tau_min``, ``tau_max``, ``gain``) of a learned temperature, held in :attr:`logit_scale`.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        latent_dim: int | None = None,
        hidden: tuple[int, ...] = (2048, 128),
        var_weight_init: float | None = None,
        input_norm: str = "none",
        mean_directions: bool = False,
        variance_floor: float = 1.0,
        variance_scale: float = 1.0,
        covariance: str = "isotropic",
        mean_dim: int = 1,
        temperature: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        if input_norm not in ("none", "batch"):
            raise ValueError(f"input_norm must be 'none' or 'batch', got {input_norm!r}")
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {', '.join(COVARIANCES)}, got {covariance!r}")
        if not (variance_floor > 0 and variance_scale > 0):
            raise ValueError(f"variance_floor and variance_scale must be > 0, got {variance_floor}, {variance_scale}")
        if mean_dim < 1 or (mean_dim > 1 and mean_directions):
            raise ValueError(f"mean_dim must be >= 1 and 1 with mean_directions, got {mean_dim}")
        if in_features < 1 or num_classes < 1 or not hidden or min(hidden) < 1:
            raise ValueError(
                f"MixtureDensityNetwork needs positive sizes, got in_features={in_features}, "
                f"num_classes={num_classes}, hidden={hidden}"
            )
        if latent_dim is not None and latent_dim < 1:
            raise ValueError(f"latent_dim must be positive, got {latent_dim}")
        self.in_features = in_features
        self.num_classes = num_classes
        self.latent_dim = latent_dim or in_features
        self.hidden_sizes = tuple(int(h) for h in hidden)
        self.input_norm = input_norm
        layers: list[nn.Module] = [nn.BatchNorm1d(in_features, affine=False)] if input_norm == "batch" else []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        self.hidden = nn.Sequential(*layers)
        self.mean_dim = int(mean_dim)
        if self.mean_dim > self.latent_dim:
            raise ValueError(f"mean_dim {mean_dim} exceeds the latent dimension {self.latent_dim}")
        self.variance_floor, self.variance_scale = float(variance_floor), float(variance_scale)
        self.covariance = covariance
        self.out = nn.Linear(width, (2 + self.mean_dim) * num_classes)
        self.var_weight_init = 1.0 / width if var_weight_init is None else float(var_weight_init)
        self.mean_directions = bool(mean_directions)
        self.directions = (
            nn.Parameter(torch.full((num_classes, self.latent_dim), 1.0 / math.sqrt(self.latent_dim)))
            if self.mean_directions
            else None
        )
        self.logit_scale = LogitScale(**temperature) if temperature is not None else None
        self.reset_output()

    @property
    def spec(self) -> dict[str, Any]:
        """Constructor arguments (JSON-ready), stored beside the weights so a checkpoint can rebuild the network."""
        return {
            "in_features": self.in_features,
            "num_classes": self.num_classes,
            "latent_dim": self.latent_dim,
            "hidden": list(self.hidden_sizes),
            "var_weight_init": self.var_weight_init,
            "input_norm": self.input_norm,
            "mean_directions": self.mean_directions,
            "variance_floor": self.variance_floor,
            "variance_scale": self.variance_scale,
            "covariance": self.covariance,
            "mean_dim": self.mean_dim,
            "temperature": None if self.logit_scale is None else self.logit_scale.spec,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any], state_dict: dict[str, Tensor] | None = None) -> MixtureDensityNetwork:
        """The network :attr:`spec` describes (extra entries, e.g. a stored ``state_dict``, are ignored), with the
        weights of ``state_dict`` when given (strictly: every key, every shape)."""
        mdn = cls(
            int(spec["in_features"]),
            int(spec["num_classes"]),
            latent_dim=spec.get("latent_dim"),
            hidden=tuple(int(h) for h in spec["hidden"]),
            var_weight_init=spec.get("var_weight_init"),
            input_norm=str(spec.get("input_norm", "none")),
            mean_directions=bool(spec.get("mean_directions", False)),
            variance_floor=float(spec.get("variance_floor", 1.0)),
            variance_scale=float(spec.get("variance_scale", 1.0)),
            covariance=str(spec.get("covariance", "isotropic")),
            mean_dim=int(spec.get("mean_dim", 1)),
            temperature=spec.get("temperature"),
        )
        if state_dict is not None:
            mdn.load_state_dict(state_dict, strict=True)
        return mdn

    def reset_output(self) -> None:
        """Re-initialise the output layer as described in the class docstring."""
        c, fan_in = self.num_classes, self.out.in_features
        bound = 1.0 / math.sqrt(fan_in)
        var_rows = (1 + self.mean_dim) * c
        with torch.no_grad():
            nn.init.uniform_(self.out.weight[:var_rows], -bound, bound)
            self.out.weight[var_rows:].fill_(self.var_weight_init)
            self.out.bias.zero_()

    def forward(self, h: Tensor) -> GaussianMixture:
        """Mixture parameters for a batch of features.

        Args:
            h: ``(B, H)`` encoder features (L2-normalised in ProbMCL), any floating dtype.

        Returns:
            A :class:`GaussianMixture` with float32 ``(B, C)`` weights, means (``(B, C, d)`` for ``mean_dim`` d > 1),
            variances and ``dim = latent_dim``.
        """
        if h.ndim != 2 or h.shape[1] != self.in_features:
            raise ValueError(f"MixtureDensityNetwork expects (B, {self.in_features}) features, got {tuple(h.shape)}")
        with torch.autocast(device_type=h.device.type, enabled=False):
            params = self.out(self.hidden(h.float())).float()
        c, d = self.num_classes, self.mean_dim
        a_pi, a_mu, a_var = params.split([c, c * d, c], dim=1)
        log_pi = F.log_softmax(a_pi, dim=1)
        means = a_mu if d == 1 else a_mu.reshape(-1, c, d)
        directions = None if self.directions is None else F.normalize(self.directions.float(), dim=1)
        return GaussianMixture(log_pi.exp(), means, self._variances(a_var), self.latent_dim, log_pi, directions)

    def _variances(self, a_var: Tensor) -> Tensor:
        """``(B, C)`` variances from the pre-activations (see the class docstring; >= ``variance_floor``)."""
        if self.covariance == "fixed":
            return a_var.new_full(a_var.shape, self.variance_floor + self.variance_scale)
        if self.covariance == "shared":
            a_var = a_var.mean(dim=1, keepdim=True).expand_as(a_var)
        if self.variance_floor == self.variance_scale == 1.0:
            return F.elu(a_var) + 2.0  # the paper's expression, bit for bit as before the options existed
        return self.variance_floor + self.variance_scale * (F.elu(a_var) + 1.0)


__all__ = ["MixtureDensityNetwork"]
