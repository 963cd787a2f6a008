"""``mode: joint``: one stage that trains the encoder, the MDN and the linear head together, as KMCL trained.

The loss of a batch of N images (2N views, ``[view 1 of each image; view 2 of each image]``)::

    L = ASL(head(h), y)  +  L_NLL(mixture, h, y)  +  lambda * L_PCL(mixture, y)

with ``h`` the encoder's unit-norm features of the 2N views (math.md s.1), the mixture the MDN's output on ``h``
(float32, outside autocast), ASL as published (math.md s.9, a mean over the 2N x C logits) and ``L_NLL + lambda *
L_PCL`` exactly the contrastive stage's objective (paper Eq. 4, math.md s.3 and 7). The head reads the same ``h`` the
MDN reads, so the classifier the bundle stores is the one the contrastive term shaped. The MDN is dropped at
inference, as in the two-stage model.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from probmcl_med.engine.contrastive import ContrastiveModel, objective_terms, views_to_device
from probmcl_med.engine.divergence import classifier_cause, contrastive_cause, is_finite
from probmcl_med.engine.steps import TrainStep


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
    """``ASL(logits, y) + ProbMCLObjective(mixture, h, y)`` over the 2N views; returns the terms for the logs.

    Args:
        asl: the asymmetric loss (``probmcl_med.core.classification.AsymmetricLoss``).
        objective: ``NLL + lambda * PCL`` (:func:`probmcl_med.engine.contrastive.build_objective`).
    """

    def __init__(self, asl: nn.Module, objective: nn.Module) -> None:
        super().__init__()
        self.asl = asl
        self.objective = objective

    def forward(self, logits: Tensor, mixture: Any, h: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``{"loss", "asl", "nll", "pcl", "valid_anchors"}``; ``loss`` carries the gradient."""
        asl = self.asl(logits.float(), labels)
        terms = objective_terms(self.objective(mixture, h, labels))
        terms["loss"] = asl + terms["loss"]
        terms["asl"] = asl.detach()
        return terms


class JointStep(TrainStep):
    """The joint iteration; ``engine.network`` is a (possibly DDP-wrapped) :class:`JointModel`."""

    stage = "joint"

    def diagnose(self, engine: Any, forward: dict[str, Any], terms: dict[str, Tensor]) -> str:
        objective = engine.loss_function
        if not is_finite(forward["h"]) or is_finite(terms["asl"]):
            return contrastive_cause(objective.objective, forward, terms)
        return classifier_cause(objective.asl, forward, {**terms, "loss": terms["asl"]})

    def forward(self, engine: Any, batch: dict[str, Any]) -> dict[str, Any]:
        views, view_labels = views_to_device(engine, batch)
        h, mixture, logits = engine.network(views)
        return {"h": h, "mixture": mixture, "logits": logits, "labels": view_labels}

    def compute_loss(self, engine: Any, forward: dict[str, Any]) -> dict[str, Tensor]:
        return engine.loss_function(forward["logits"], forward["mixture"], forward["h"], forward["labels"])


def joint_parameter_groups(
    head: nn.Module, encoder: nn.Module, mdn: nn.Module, head_lr: float, encoder_lr: float, mdn_lr: float
) -> list[dict[str, Any]]:
    """Adam groups: the head at ``classifier.lr``, the encoder at ``classifier.encoder_lr`` (or ``contrastive.lr``
    when that is 0), the MDN at ``contrastive.lr``. The head's group comes first (its lr is the one logged)."""
    return [
        {"params": list(head.parameters()), "lr": head_lr},
        {"params": [p for p in encoder.parameters() if p.requires_grad], "lr": encoder_lr},
        {"params": list(mdn.parameters()), "lr": mdn_lr},
    ]


__all__ = ["JointModel", "JointObjective", "JointStep", "joint_parameter_groups"]
