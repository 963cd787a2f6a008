"""``mode: joint``: one stage that trains the encoder, the MDN and the linear head together, as KMCL trained.

The loss of a batch of N images (2N views, ``[view 1 of each image; view 2 of each image]``)::

    L = head_loss(head(h), y)  +  L_NLL(mixture, h, y)  +  lambda * L_PCL(mixture, y)

with ``h`` the encoder's unit-norm features of the 2N views (math.md s.1), the mixture the MDN's output on ``h``
(float32, outside autocast), the head loss ``classifier.loss`` (BCE, focal or ASL as published, math.md s.9, a mean
over the 2N x C logits; logged under its name) and ``L_NLL + lambda * L_PCL`` exactly the contrastive stage's
objective (paper Eq. 4, math.md s.3 and 7). The head reads the same ``h`` the
MDN reads, so the classifier the bundle stores is the one the contrastive term shaped. The MDN is dropped at
inference, as in the two-stage model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from probmcl_med.config.sections import JointContrastiveConfig, JointHeadConfig
from probmcl_med.engine.classifier import head_loss
from probmcl_med.engine.contrastive import (
    ContrastiveModel,
    build_mdn,
    build_objective,
    objective_terms,
    views_to_device,
)
from probmcl_med.engine.divergence import classifier_cause, contrastive_cause, is_finite
from probmcl_med.engine.steps import TrainStep
from probmcl_med.engine.training import Carried, StageRun, model_states
from probmcl_med.engine.validation import best_record, bundle_writer, validation_handlers
from probmcl_med.models.heads import Classifier, LinearHead


class JointModel(nn.Module):
    """Encoder + MDN + head: views (2N, 3, H, W) -> (h (2N, H) float32, mixture over 2N, logits (2N, C) float32)."""

    def __init__(self, encoder: nn.Module, mdn: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.contrastive = ContrastiveModel(encoder, mdn)
        self.head = head

    def forward(self, x: Tensor) -> tuple[Tensor, Any, Tensor]:
        h, mixture = self.contrastive(x)
        logits = self.head(h.to(self.head.weight.dtype)).float()
        return h, mixture, logits


class JointObjective(nn.Module):
    """``head_loss(logits, y) + ProbMCLObjective(mixture, h, y)`` over the 2N views; returns the terms for the logs.

    Args:
        head_loss: the classifier loss (``probmcl_med.core.classification.AsymmetricLoss``: bce, focal or asl).
        objective: ``NLL + lambda * PCL`` (:func:`probmcl_med.engine.contrastive.build_objective`).
        loss_name: the head loss's name in the logs (``bce``, ``focal``, ``asl``).
    """

    def __init__(self, head_loss: nn.Module, objective: nn.Module, loss_name: str = "asl") -> None:
        super().__init__()
        self.head_loss = head_loss
        self.objective = objective
        self.loss_name = loss_name

    def forward(self, logits: Tensor, mixture: Any, h: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``{"loss", <loss_name>, "nll", "pcl"}``; ``loss`` carries the gradient."""
        head = self.head_loss(logits.float(), labels)
        terms = objective_terms(self.objective(mixture, h, labels))
        terms["loss"] = head + terms["loss"]
        terms[self.loss_name] = head.detach()
        return terms


class JointStep(TrainStep):
    """The joint iteration; ``engine.network`` is a (possibly DDP-wrapped) :class:`JointModel`."""

    stage = "joint"

    def diagnose(self, engine: Any, forward: dict[str, Any], terms: dict[str, Tensor]) -> str:
        objective = engine.loss_function
        head = terms[objective.loss_name]
        if not is_finite(forward["h"]) or is_finite(head):
            return contrastive_cause(objective.objective, forward, terms)
        return classifier_cause(objective.head_loss, forward, {**terms, "loss": head})

    def forward(self, engine: Any, batch: dict[str, Any]) -> dict[str, Any]:
        views, view_labels = views_to_device(engine, batch)
        h, mixture, logits = engine.network(views)
        return {"h": h, "mixture": mixture, "logits": logits, "labels": view_labels}

    def compute_loss(self, engine: Any, forward: dict[str, Any]) -> dict[str, Tensor]:
        return engine.loss_function(forward["logits"], forward["mixture"], forward["h"], forward["labels"])


def joint_parameter_groups(
    head: nn.Module, encoder: nn.Module, mdn: nn.Module, head_lr: float, encoder_lr: float, mdn_lr: float
) -> list[dict[str, Any]]:
    """Adam groups: the head at ``classifier.lr``, the encoder at ``classifier.encoder_lr`` (``contrastive.lr`` when
    that is null), the MDN at ``contrastive.lr``. The head's group comes first (its lr is the one logged)."""
    return [
        {"params": list(head.parameters()), "lr": head_lr},
        {"params": list(encoder.parameters()), "lr": encoder_lr},
        {"params": list(mdn.parameters()), "lr": mdn_lr},
    ]


@dataclass(frozen=True)
class JointStage:
    """Mode joint's one stage: encoder + MDN + head for ``epochs`` passes on two views per image, validated each epoch
    and saved as ``RUN/model.pt`` (with its MDN) at its best validation epoch."""

    contrastive: JointContrastiveConfig
    head: JointHeadConfig
    epochs: int
    name = "joint"
    sections = ("contrastive", "classifier")
    length_key = "epochs"
    trains_encoder = True
    trains_objective = True

    def run(self, run: StageRun, carried: Carried) -> Carried:
        c, k, inputs, device = self.contrastive, self.head, run.inputs, run.ctx.device
        encoder = inputs.encoder
        dataset = inputs.view(inputs.train_ds, inputs.two_views())
        per_rank = run.per_rank_batch(c.batch_size, len(dataset), "contrastive", minimum=2)
        loader, sampler = run.loader(dataset, per_rank, shuffle=True, drop_last=True, workers=run.workers)
        mdn = build_mdn(c, int(encoder.num_features), inputs.num_classes).to(device)
        head = LinearHead(int(encoder.num_features), inputs.num_classes).to(device)
        if run.resume is not None:
            mdn.load_state_dict(run.resume.state["models"]["mdn"])
            head.load_state_dict(run.resume.state["models"]["head"])
        encoder_lr = c.lr if k.encoder_lr is None else k.encoder_lr
        groups = joint_parameter_groups(head, encoder, mdn, k.lr, encoder_lr, c.lr)
        val = None if inputs.val_ds is None else run.batches(inputs.view(inputs.val_ds, inputs.eval_transform()),
                                                             k.batch_size)  # fmt: skip
        validation = validation_handlers(
            Classifier(encoder, head, normalize_features=True),
            val,
            inputs.class_names,
            device,
            run.amp.autocast,
            save=bundle_writer(inputs, run.session.out, head, mdn, unit_norm=True),
            best=run.resume.state.get("best") if run.resume is not None else None,
            is_main=run.ctx.is_main,
        )
        objective = build_objective(c, distributed=run.ctx.distributed, mdn=mdn)
        run.train(
            JointStep(run.amp, run.ctx.world_size),
            network=run.wrap(JointModel(inputs.encoder_fwd, mdn, head)),
            optimizer=torch.optim.Adam(groups, lr=k.lr, weight_decay=k.weight_decay),
            loss_function=JointObjective(head_loss(k), objective, k.loss),
            loader=loader,
            sampler=sampler,
            per_rank=per_rank,
            epochs=self.epochs,
            models=lambda: model_states(encoder=encoder, head=head, mdn=mdn),
            extra=validation,
            best=(lambda: validation[-1].state_dict()) if validation else None,
        )
        return Carried(mdn=mdn, best=best_record(validation))


__all__ = ["JointModel", "JointObjective", "JointStage", "JointStep", "joint_parameter_groups"]
