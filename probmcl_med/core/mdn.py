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

from probmcl_med.core.mixture import GaussianMixture


class MixtureDensityNetwork(nn.Module):
    """``h (B, H) -> GaussianMixture`` with ``C`` isotropic components (paper Eq. 1, docs/math.md s.1).

    ``h -> Linear(H, 2048) -> ReLU -> Linear(2048, 128) -> ReLU -> Linear(128, 3C) -> (a_pi, a_mu, a_var)`` and

    * ``pi = softmax(a_pi)`` (the mixture also keeps ``log_softmax(a_pi)`` exactly),
    * ``mu = a_mu`` (component k's mean vector is ``mu_k * 1``),
    * ``var = ELU(a_var) + 2 >= 1``: the paper's "modified ELU ... minimum value of one" (ELU > -1).

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
    ) -> None:
        super().__init__()
        if input_norm not in ("none", "batch"):
            raise ValueError(f"input_norm must be 'none' or 'batch', got {input_norm!r}")
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
        self.out = nn.Linear(width, 3 * num_classes)
        self.var_weight_init = 1.0 / width if var_weight_init is None else float(var_weight_init)
        self.mean_directions = bool(mean_directions)
        self.directions = (
            nn.Parameter(torch.full((num_classes, self.latent_dim), 1.0 / math.sqrt(self.latent_dim)))
            if self.mean_directions
            else None
        )
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
        )
        if state_dict is not None:
            mdn.load_state_dict(state_dict, strict=True)
        return mdn

    def reset_output(self) -> None:
        """Re-initialise the output layer as described in the class docstring."""
        c, fan_in = self.num_classes, self.out.in_features
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            nn.init.uniform_(self.out.weight[: 2 * c], -bound, bound)
            self.out.weight[2 * c :].fill_(self.var_weight_init)
            self.out.bias.zero_()

    def forward(self, h: Tensor) -> GaussianMixture:
        """Mixture parameters for a batch of features.

        Args:
            h: ``(B, H)`` encoder features (L2-normalised in ProbMCL), any floating dtype.

        Returns:
            A :class:`GaussianMixture` with float32 ``(B, C)`` weights, means, variances and ``dim = latent_dim``.
        """
        if h.ndim != 2 or h.shape[1] != self.in_features:
            raise ValueError(f"MixtureDensityNetwork expects (B, {self.in_features}) features, got {tuple(h.shape)}")
        with torch.autocast(device_type=h.device.type, enabled=False):
            params = self.out(self.hidden(h.float())).float()
        a_pi, a_mu, a_var = params.split(self.num_classes, dim=1)
        log_pi = F.log_softmax(a_pi, dim=1)
        directions = None if self.directions is None else F.normalize(self.directions.float(), dim=1)
        return GaussianMixture(log_pi.exp(), a_mu, F.elu(a_var) + 2.0, self.latent_dim, log_pi, directions)


__all__ = ["MixtureDensityNetwork"]
