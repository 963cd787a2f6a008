"""The classifier stage's iteration: a linear head on a frozen or fine-tuned encoder, trained with a multi-label loss.

Paper Sec. 3.3; ASL as published (docs/math.md s.9), or BCE / focal (``classifier.loss``). The frozen encoder stays in
eval mode with ``requires_grad=False`` and runs under ``torch.no_grad``, so batch-norm statistics and weights are
untouched. Without augmentation and with ``classifier.cache_features`` the features are computed once
(:func:`probmcl_med.inference.features.compute_features`) and the head trains on them. A fine-tuned encoder
(``classifier.encoder_lr > 0``, or mode ``asl``) is a second optimiser parameter group.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from probmcl_med.engine.divergence import classifier_cause
from probmcl_med.engine.steps import TrainStep
from probmcl_med.models.heads import Classifier


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` on every parameter; returns the module."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class ClassifierStep(TrainStep):
    """The classifier-stage iteration.

    ``engine.network`` is what the optimiser trains: the (DDP-wrapped) head when the encoder is frozen, the whole
    (DDP-wrapped) classifier when it is fine-tuned. ``classifier`` is the plain encoder + head.
    """

    stage = "classifier"

    def __init__(self, classifier: Classifier, frozen_encoder: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.classifier = classifier
        self.frozen_encoder = frozen_encoder

    def train_mode(self, engine: Any) -> None:
        engine.network.train()
        if self.frozen_encoder:
            self.classifier.encoder.eval()

    def forward(self, engine: Any, batch: dict[str, Any]) -> dict[str, Any]:
        device, non_blocking = engine.state.device, engine.non_blocking
        labels = batch["label"].to(device, non_blocking=non_blocking).float()
        if "features" in batch:
            logits = engine.network(batch["features"].to(device, non_blocking=non_blocking))
        elif self.frozen_encoder:
            with torch.no_grad():
                h = self.classifier.embed(batch["image"].to(device, non_blocking=non_blocking))
            logits = engine.network(h)
        else:
            logits = engine.network(batch["image"].to(device, non_blocking=non_blocking))
        return {"logits": logits, "labels": labels}

    def compute_loss(self, engine: Any, forward: dict[str, Any]) -> dict[str, Tensor]:
        loss = engine.loss_function(forward["logits"].float(), forward["labels"])
        return {"loss": loss, "asl": loss.detach()}

    def diagnose(self, engine: Any, forward: dict[str, Any], terms: dict[str, Tensor]) -> str:
        return classifier_cause(engine.loss_function, forward, terms)
