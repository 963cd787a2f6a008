"""Stage 1, contrastive: two views per image -> encoder -> L2-normalised h -> MDN -> NLL + lambda * PCL.

Paper Eq. 4 with the exact definitions of docs/math.md s.1, 3 and 7: the batch of N images becomes 2N views
``[view 1 of each image; view 2 of each image]`` with the labels repeated, the encoder runs under autocast, the MDN and
the loss in float32. Under DDP the objective gathers mixtures and labels from every rank with gradients (math.md
s.8), so the loss equals the single-process loss on the global batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from probmcl_med.config.schema import ContrastiveConfig
from probmcl_med.core.losses import ProbContrastiveLoss, ProbMCLObjective
from probmcl_med.core.mdn import MixtureDensityNetwork
from probmcl_med.engine.amp import no_autocast
from probmcl_med.engine.divergence import contrastive_cause
from probmcl_med.engine.steps import TrainStep


class ContrastiveModel(nn.Module):
    """Encoder + MDN: views (2N, 3, H, W) -> (h (2N, H) unit-norm float32, GaussianMixture over 2N samples).

    The MDN runs outside autocast, in float32, whatever precision the encoder used.
    """

    def __init__(self, encoder: nn.Module, mdn: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.mdn = mdn

    def forward(self, x: Tensor) -> tuple[Tensor, Any]:
        h = self.encoder(x)
        with no_autocast(x.device.type):
            h = h.float()
            mixture = self.mdn(h)
        return h, mixture


def stack_views(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(N, 2, 3, H, W) images, (N, C) labels -> (2N, 3, H, W) view-major, (2N, C) (view 1 block, then view 2)."""
    if images.ndim != 5 or images.shape[1] != 2:
        raise ValueError(f"the contrastive stage needs two views per image, (N, 2, 3, H, W); got {tuple(images.shape)}")
    n = images.shape[0]
    views = images.transpose(0, 1).reshape(2 * n, *images.shape[2:])
    return views, torch.cat([labels, labels], dim=0)


def mdn_from_config(c: ContrastiveConfig, in_features: int, num_classes: int) -> MixtureDensityNetwork:
    """The mixture density network of the ``contrastive`` section (z = h(x): it lives in the encoder's space), with
    its learned temperature when ``tau_learnable``."""
    temperature = (
        {"tau": c.tau, "tau_min": c.tau_min, "tau_max": c.tau_max, "gain": c.tau_gain} if c.tau_learnable else None
    )
    mdn = MixtureDensityNetwork(
        in_features,
        num_classes,
        hidden=tuple(int(h) for h in c.mdn_hidden),
        input_norm="batch" if c.mdn_input == "standardized" else "none",
        mean_directions=c.component_means == "learned_directions",
        variance_floor=c.variance_floor,
        variance_scale=c.variance_scale,
        covariance=c.covariance,
        mean_dim=c.mean_dim,
        temperature=temperature,
    )
    if c.mdn_input_gain != 1.0:  # unit-norm h: scale the first layer's initial weights (see the config field)
        first = next(m for m in mdn.modules() if isinstance(m, nn.Linear))
        with torch.no_grad():
            first.weight.mul_(c.mdn_input_gain)
    return mdn


def build_objective(c: ContrastiveConfig, distributed: bool = False, mdn: nn.Module | None = None) -> nn.Module:
    """``ProbMCLObjective`` of the ``contrastive`` section: NLL (likelihood) + lambda * PCL (similarity and its
    form, overlap, alpha, tau; the learned temperature of ``mdn`` when ``tau_learnable``).

    With ``distributed`` the contrastive term gathers every rank's mixtures with gradients; each rank's returned
    value is then scaled so that DDP's gradient averaging gives the single-process gradient of the global batch
    (see ``probmcl_med.core.losses.ProbContrastiveLoss``).
    """
    temperature = getattr(mdn, "logit_scale", None)
    if c.tau_learnable and temperature is None:
        raise ValueError("contrastive.tau_learnable: the objective needs the MDN that holds the learned temperature")
    contrastive = ProbContrastiveLoss(
        similarity=c.similarity,
        overlap=c.overlap,
        alpha=c.alpha,
        tau=c.tau,
        gather=distributed,
        form=c.similarity_form,
        temperature=temperature,
    )
    return ProbMCLObjective(lam=c.lambda_, likelihood=c.likelihood, contrastive=contrastive, nll_weight=c.nll_weight)


def objective_terms(result: Any) -> dict[str, Tensor]:
    """``{"loss", "nll", "pcl", "valid_anchors"}`` from a ``probmcl_med.core.losses.ObjectiveOutput``."""
    return {
        "loss": result.total,
        "nll": result.nll.detach(),
        "pcl": result.pcl.detach(),
        "valid_anchors": torch.tensor(float(result.valid_anchors)),
    }


def views_to_device(engine: Any, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """A batch's two views per image and labels on the trainer's device, stacked view-major (:func:`stack_views`)."""
    images = batch["image"].to(engine.state.device, non_blocking=engine.non_blocking)
    labels = batch["label"].to(engine.state.device, non_blocking=engine.non_blocking).float()
    return stack_views(images, labels)


class ContrastiveStep(TrainStep):
    """The stage-1 iteration; ``engine.network`` is a (possibly DDP-wrapped) :class:`ContrastiveModel`."""

    stage = "contrastive"

    def diagnose(self, engine: Any, forward: dict[str, Any], terms: dict[str, Tensor]) -> str:
        return contrastive_cause(engine.loss_function, forward, terms)

    def forward(self, engine: Any, batch: dict[str, Any]) -> dict[str, Any]:
        views, view_labels = views_to_device(engine, batch)
        h, mixture = engine.network(views)
        return {"h": h, "mixture": mixture, "labels": view_labels}

    def compute_loss(self, engine: Any, forward: dict[str, Any]) -> dict[str, Tensor]:
        return objective_terms(engine.loss_function(forward["mixture"], forward["h"], forward["labels"]))
