"""Stage 1, contrastive: two views per image -> encoder -> L2-normalised h -> MDN -> NLL + lambda * PCL.

:class:`ContrastiveStage` is two-stage's first stage: it owns its model (:class:`ContrastiveModel`), its objective
(:func:`build_objective`), its step (:class:`ContrastiveStep`), its transform (two augmented views per image) and its
loader, and hands the trained MDN on to the next stage.

Paper Eq. 4 with the exact definitions of docs/math.md s.1, 3 and 7: the batch of N images becomes 2N views
``[view 1 of each image; view 2 of each image]`` with the labels repeated, the encoder runs under autocast, the MDN and
the loss in float32. Under DDP the objective gathers mixtures and labels from every rank with gradients (math.md
s.8), so the loss equals the single-process loss on the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probmcl_med.config.sections import ContrastiveStageConfig, ObjectiveConfig
from probmcl_med.core.losses import ProbContrastiveLoss, ProbMCLObjective
from probmcl_med.core.mdn import MixtureDensityNetwork
from probmcl_med.engine.amp import no_autocast
from probmcl_med.engine.divergence import contrastive_cause
from probmcl_med.engine.steps import TrainStep
from probmcl_med.engine.training import Carried, StageRun, model_states


class ContrastiveModel(nn.Module):
    """Encoder + MDN: views (2N, 3, H, W) -> (h (2N, H) unit-norm float32, GaussianMixture over 2N samples).

    ``h = encoder(x) / ||encoder(x)||`` (math.md s.1): the L2 normalisation is this model's, the encoder returns its
    raw pooled features. The normalisation and the MDN run outside autocast, in float32, whatever precision the
    encoder used.
    """

    def __init__(self, encoder: nn.Module, mdn: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.mdn = mdn

    def forward(self, x: Tensor) -> tuple[Tensor, Any]:
        features = self.encoder(x)
        with no_autocast(x.device.type):
            h = F.normalize(features.float(), dim=1)
            mixture = self.mdn(h)
        return h, mixture


def build_mdn(c: ObjectiveConfig, in_features: int, num_classes: int) -> MixtureDensityNetwork:
    """The mixture density network of the ``contrastive`` section (z = h(x): it lives in the encoder's space): the
    component options (variance floor and scale, covariance, mean dimension) and, with ``tau_learnable``, the learned
    temperature it holds; with ``mdn_input_gain`` its first layer's initial weights scaled (h is unit-norm, see the
    config field)."""
    spec = {
        "in_features": in_features,
        "num_classes": num_classes,
        "hidden": [int(h) for h in c.mdn_hidden],
        "input_norm": "batch" if c.mdn_input == "standardized" else "none",
        "mean_directions": c.component_means == "learned_directions",
        "variance_floor": c.variance_floor,
        "variance_scale": c.variance_scale,
        "covariance": c.covariance,
        "mean_dim": c.mean_dim,
        "temperature": (
            {"tau": c.tau, "tau_min": c.tau_min, "tau_max": c.tau_max, "gain": c.tau_gain} if c.tau_learnable else None
        ),
    }
    mdn = MixtureDensityNetwork.from_spec(spec)
    if c.mdn_input_gain != 1.0:
        first = next(m for m in mdn.modules() if isinstance(m, nn.Linear))
        with torch.no_grad():
            first.weight.mul_(c.mdn_input_gain)
    return mdn


def stack_views(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(N, 2, 3, H, W) images, (N, C) labels -> (2N, 3, H, W) view-major, (2N, C) (view 1 block, then view 2)."""
    if images.ndim != 5 or images.shape[1] != 2:
        raise ValueError(f"the contrastive stage needs two views per image, (N, 2, 3, H, W); got {tuple(images.shape)}")
    n = images.shape[0]
    views = images.transpose(0, 1).reshape(2 * n, *images.shape[2:])
    return views, torch.cat([labels, labels], dim=0)


def build_objective(c: ObjectiveConfig, distributed: bool = False, mdn: nn.Module | None = None) -> nn.Module:
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
    """``{"loss", "nll", "pcl"}`` from a ``probmcl_med.core.losses.ObjectiveOutput`` (``loss`` carries the gradient)."""
    return {"loss": result.total, "nll": result.nll.detach(), "pcl": result.pcl.detach()}


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


@dataclass(frozen=True)
class ContrastiveStage:
    """two-stage's stage 1: encoder + MDN trained with NLL + lambda * PCL for ``contrastive.epochs`` passes."""

    config: ContrastiveStageConfig
    name = "contrastive"
    sections = ("contrastive",)
    length_key = "contrastive.epochs"
    trains_encoder = True
    trains_objective = True

    @property
    def epochs(self) -> int:
        return self.config.epochs

    def run(self, run: StageRun, carried: Carried) -> Carried:
        c, inputs = self.config, run.inputs
        dataset = inputs.view(inputs.train_ds, inputs.two_views())
        per_rank = run.per_rank_batch(c.batch_size, len(dataset), "contrastive", minimum=2)
        loader, sampler = run.loader(dataset, per_rank, shuffle=True, drop_last=True, workers=run.workers)
        mdn = build_mdn(c, int(inputs.encoder.num_features), inputs.num_classes).to(run.ctx.device)
        if run.resume is not None:
            mdn.load_state_dict(run.resume.state["models"]["mdn"])
        encoder = inputs.encoder
        optimizer = torch.optim.Adam([*encoder.parameters(), *mdn.parameters()], lr=c.lr, weight_decay=c.weight_decay)
        run.train(
            ContrastiveStep(run.amp, run.ctx.world_size),
            network=run.wrap(ContrastiveModel(inputs.encoder_fwd, mdn)),
            optimizer=optimizer,
            loss_function=build_objective(c, distributed=run.ctx.distributed, mdn=mdn),
            loader=loader,
            sampler=sampler,
            per_rank=per_rank,
            epochs=c.epochs,
            models=lambda: model_states(encoder=encoder, mdn=mdn),
        )
        return Carried(mdn=mdn)
