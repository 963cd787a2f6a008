"""Validation as a handler: at each epoch end of the classifier stage, the validation metrics through the one
predict loop (:func:`probmcl_med.inference.loop.predict_batches`), and the best epoch's model kept and written.

The best epoch is the one with the highest validation mAP (docs/math.md s.10); without a validation split every
epoch counts as an improvement, so the last one is kept. The handler's ``best`` record (mAP, epoch, head and, for a
fine-tuned encoder, encoder weights) is part of the training checkpoint, so a resumed run keeps the same best epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from ignite.engine import Events

from probmcl_med.bundle import cpu_state
from probmcl_med.core.metrics import multilabel_metrics
from probmcl_med.inference.loop import predict_batches
from probmcl_med.models.heads import Classifier


def validation_map(scores: np.ndarray, targets: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """mAP, CF1, OF1 (percent) at threshold 0.5 and the number of classes mAP averages over (classes without
    positives are left out)."""
    metrics = multilabel_metrics(scores, targets, threshold=0.5, class_names=class_names)
    return {
        "mAP": metrics["summary"]["mAP"],
        "CF1": metrics["summary"]["CF1"],
        "OF1": metrics["summary"]["OF1"],
        "evaluated_classes": metrics["num_evaluated_classes"],
    }


class Validation:
    """Epoch-end validation on rank 0: ``val_*`` and ``best_epoch`` into ``engine.state.metrics``; on improvement
    the best weights are kept and ``save_best(best)`` writes the bundle.

    Args:
        classifier: encoder + head (the plain modules, not the DDP wrapper).
        batches: a factory of the validation batches (images, or cached features), or None without a validation split.
        class_names: the C class names.
        device: where the model runs.
        autocast: training's AMP context factory.
        frozen_encoder: the encoder is not trained, so only the head's weights are kept.
        save_best: called with the best record after each improvement.
        is_main: rank 0 (the only one that validates and writes).
        best: a record to continue from (a resumed run).
    """

    def __init__(
        self,
        classifier: Classifier,
        batches: Callable[[], Iterable[dict[str, Any]]] | None,
        class_names: list[str],
        device: torch.device,
        autocast: Callable[[], AbstractContextManager[Any]],
        frozen_encoder: bool,
        save_best: Callable[[dict[str, Any]], Any],
        is_main: bool,
        best: dict[str, Any] | None = None,
    ) -> None:
        self.classifier = classifier
        self.batches = batches
        self.class_names = class_names
        self.device = device
        self.autocast = autocast
        self.frozen_encoder = frozen_encoder
        self.save_best = save_best
        self.is_main = is_main
        self.best: dict[str, Any] = {"map": None, "epoch": None, "head": None, "encoder": None}
        self.best.update(best or {})

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        if not self.is_main:
            return
        improved = True
        if self.batches is not None:
            out = predict_batches(self.classifier, self.batches(), self.device, autocast=self.autocast)
            val = validation_map(out.probs, out.targets, self.class_names)
            engine.state.metrics.update({f"val_{key}": value for key, value in val.items()})
            value = val["mAP"] if val["mAP"] is not None else -1.0
            improved = self.best["map"] is None or value > self.best["map"]
            if improved:
                self.best["map"] = value
        if improved:
            self.keep(engine.state.epoch)
        engine.state.metrics["best_epoch"] = self.best["epoch"]

    def keep(self, epoch: int | None) -> None:
        """Keep the current weights as the best (``epoch`` None: an untrained head, zero epochs) and save them."""
        self.best["epoch"] = epoch
        self.best["head"] = cpu_state(self.classifier.head)
        self.best["encoder"] = None if self.frozen_encoder else cpu_state(self.classifier.encoder)
        self.save_best(self.best)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.best)
