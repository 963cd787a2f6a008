"""Stage 2, classifier: the MDN dropped, the encoder frozen, a linear head trained with the asymmetric loss.

Paper Sec. 3.3; ASL as published (docs/math.md s.9). The frozen encoder stays in eval mode with
``requires_grad=False`` and runs under ``torch.no_grad``, so batch-norm statistics and weights are untouched. Without
augmentation (``classifier.augment: false``) and with ``classifier.cache_features`` the features are computed once
(:func:`probmcl_med.inference.features.compute_features`) and the head trains on them. ``classifier.encoder_lr > 0`` fine-tunes the encoder too
(a second optimiser parameter group). Each epoch ends with a validation pass (mAP, docs/math.md s.10).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from probmcl_med.core.metrics import multilabel_metrics
from probmcl_med.engine.base import StageTrainer
from probmcl_med.models.heads import Classifier


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` on every parameter; returns the module."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def validation_map(scores: np.ndarray, targets: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """mAP (percent) and the number of classes it averages over (classes without positives are left out)."""
    metrics = multilabel_metrics(scores, targets, threshold=0.5, class_names=class_names)
    return {
        "mAP": metrics["summary"]["mAP"],
        "CF1": metrics["summary"]["CF1"],
        "OF1": metrics["summary"]["OF1"],
        "evaluated_classes": metrics["num_evaluated_classes"],
    }


class ClassifierTrainer(StageTrainer):
    """Stage-2 MONAI trainer.

    ``network`` is what the optimiser trains: the (DDP-wrapped) head when the encoder is frozen, the whole
    (DDP-wrapped) classifier when it is fine-tuned. ``classifier`` is the plain encoder + head.
    """

    def __init__(self, *, classifier: Classifier, frozen_encoder: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.classifier = classifier
        self.frozen_encoder = frozen_encoder

    def train_mode(self) -> None:
        self.network.train()
        if self.frozen_encoder:
            self.classifier.encoder.eval()

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        device = self.state.device
        labels = batch["label"].to(device, non_blocking=self.non_blocking).float()
        if "features" in batch:
            logits = self.network(batch["features"].to(device, non_blocking=self.non_blocking))
        elif self.frozen_encoder:
            with torch.no_grad():
                h = self.classifier.embed(batch["image"].to(device, non_blocking=self.non_blocking))
            logits = self.network(h)
        else:
            logits = self.network(batch["image"].to(device, non_blocking=self.non_blocking))
        return {"logits": logits, "labels": labels}

    def compute_loss(self, forward: dict[str, Any]) -> dict[str, Tensor]:
        loss = self.loss_function(forward["logits"].float(), forward["labels"])
        return {"loss": loss, "asl": loss.detach()}
