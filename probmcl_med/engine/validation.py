"""Validation and the best model: MONAI's ``SupervisedEvaluator`` run by its ``ValidationHandler`` at each epoch end,
its key metric (validation mAP) tracked by MONAI's own best-metric bookkeeping, and ``RUN/model.pt`` written when it
improves.

- The evaluator's iteration is the predict loop's own step (:func:`probmcl_med.inference.loop.forward_batch`), so the
  validation numbers are those ``evaluate --split valid`` computes; a batch emptied by ``dataset.skip_bad`` counts
  nothing.
- The scores are ignite metrics (:class:`ValidationScores`) over the whole split, computed with
  :func:`probmcl_med.core.metrics.multilabel_metrics`: mAP, CF1, OF1 at threshold 0.5 (percent), classes without
  positives left out of the mAP (docs/math.md s.10). Ours rather than ignite's ``EpochMetric``: validation runs on the
  main process only, and ``EpochMetric`` all-gathers its inputs across the DDP processes, which would wait forever for
  the others.
- :class:`BestModel` copies the scores into the trainer's epoch metrics and writes the bundle when the evaluator's
  ``best_metric_epoch`` is this epoch (the first epoch always counts; without a validation split every epoch does, so
  the last is kept). Its record (best mAP and epoch) goes into the training checkpoint, so a resumed run keeps the same
  best epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from ignite.metrics import Metric
from monai.engines import SupervisedEvaluator
from monai.handlers import ValidationHandler
from torch import nn

from probmcl_med.bundle import DatasetSource, save_model_bundle
from probmcl_med.core.metrics import multilabel_metrics
from probmcl_med.data.base import every_sample_skipped
from probmcl_med.engine.inputs import RunInputs
from probmcl_med.engine.steps import quiet_termination
from probmcl_med.inference.loop import eval_mode, forward_batch
from probmcl_med.models.heads import Classifier

NO_SCORE = -1.0
"""The key metric of an epoch whose validation split has no class with positives (mAP undefined): never better."""


class ValidationScores(Metric):
    """CF1 and OF1 (percent, threshold 0.5) and the number of classes mAP averages over, as ``val_*``; the mAP is the
    evaluator's key metric, :class:`ValidationMAP`, which reads the same computation (:meth:`summary`, once per pass).

    Reads the evaluator's output ``{"y_pred": (B, C) float64 probabilities, "y": (B, C) labels}`` (ignite's keys).
    """

    def __init__(self, class_names: list[str], dataset: Any = None) -> None:
        self.class_names = class_names
        self.dataset = dataset
        super().__init__(metrics_result_mode="flatten")

    def reset(self) -> None:
        self._probs: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []
        self._summary: dict[str, Any] | None = None

    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        probs, targets = output
        if len(probs):
            self._probs.append(probs.numpy())
            self._targets.append(targets.double().numpy())

    def summary(self) -> dict[str, Any]:
        """mAP, CF1, OF1 and the evaluated classes of the pass so far (computed once)."""
        if self._summary is None:
            if not self._probs:  # samples there were, none readable (dataset.skip_bad)
                raise every_sample_skipped(self.dataset)
            probs, targets = np.concatenate(self._probs), np.concatenate(self._targets)
            metrics = multilabel_metrics(probs, targets, threshold=0.5, class_names=self.class_names)
            self._summary = {**metrics["summary"], "evaluated_classes": metrics["num_evaluated_classes"]}
        return self._summary

    def compute(self) -> dict[str, Any]:
        s = self.summary()
        return {"val_CF1": s["CF1"], "val_OF1": s["OF1"], "val_evaluated_classes": s["evaluated_classes"]}


class ValidationMAP(Metric):
    """The evaluator's key metric, ``val_mAP``: the validation mAP (:data:`NO_SCORE` when no class has positives)."""

    def __init__(self, scores: ValidationScores) -> None:
        self.scores = scores
        super().__init__()

    def reset(self) -> None:
        pass

    def update(self, output: Any) -> None:
        pass

    def compute(self) -> float:
        value = self.scores.summary()["mAP"]
        return NO_SCORE if value is None else float(value)


def evaluation_step(
    classifier: Classifier, autocast: Callable[[], AbstractContextManager[Any]]
) -> Callable[[Any, Any], dict[str, Any]]:
    """The evaluator's iteration: the predict loop's step on one batch (eval mode, no gradient, training's AMP)."""

    def step(engine: Any, batch: Any) -> dict[str, Any]:
        if batch is None:  # every sample of the batch was unreadable and skipped (dataset.skip_bad)
            empty = torch.zeros(0, int(classifier.head.out_features), dtype=torch.float64)
            return {"y_pred": empty, "y": empty}
        with eval_mode(classifier), torch.no_grad(), autocast():
            logits, _ = forward_batch(classifier, batch, engine.state.device)
        return {"y_pred": torch.sigmoid(logits).double().cpu(), "y": batch["label"]}  # as predict_batches

    return step


class BestModel:
    """At each trainer epoch end, after the :class:`~monai.handlers.ValidationHandler`: the scores into the trainer's
    ``engine.state.metrics``, ``best_epoch``, and ``save()`` when this epoch is the best so far.

    Args:
        evaluator: the validation evaluator, or None without a validation split (every epoch is then kept).
        save: writes the bundle from the current weights.
        best: the record of a resumed run (``{"map", "epoch"}``), or None.
    """

    def __init__(
        self, evaluator: SupervisedEvaluator | None, save: Callable[[dict[str, Any]], Any], best: dict | None
    ) -> None:
        self.evaluator = evaluator
        self.save = save
        self.best: dict[str, Any] = {"map": None, "epoch": None, **(best or {})}
        if evaluator is not None and self.best["epoch"] is not None:  # a resumed run: MONAI's bookkeeping goes on
            evaluator.state.best_metric = NO_SCORE if self.best["map"] is None else float(self.best["map"])
            evaluator.state.best_metric_epoch = int(self.best["epoch"])

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        epoch = int(engine.state.epoch)
        improved = True
        if self.evaluator is not None:
            scores = {k: v for k, v in self.evaluator.state.metrics.items() if k.startswith("val_")}
            if not scores.get("val_evaluated_classes"):
                scores["val_mAP"] = None  # no class with positives: mAP is undefined
            engine.state.metrics.update(scores)
            improved = int(self.evaluator.state.best_metric_epoch) == epoch
            if improved:
                value = float(self.evaluator.state.best_metric)
                self.best["map"] = None if value == NO_SCORE else value
        if improved:
            self.best["epoch"] = epoch
            self.save(self.best)
        engine.state.metrics["best_epoch"] = self.best["epoch"]

    def state_dict(self) -> dict[str, Any]:
        return dict(self.best)


def validation_handlers(
    classifier: Classifier,
    batches: Any,
    class_names: list[str],
    device: torch.device,
    autocast: Callable[[], AbstractContextManager[Any]],
    save: Callable[[dict[str, Any]], Any],
    best: dict[str, Any] | None,
    is_main: bool,
) -> tuple[Any, ...]:
    """The trainer handlers of validation: ``(ValidationHandler, BestModel)`` on the main process, nothing elsewhere.

    Args:
        classifier: encoder + head (the plain modules, not a DDP wrapper).
        batches: the validation DataLoader (images, or cached features), or None without a validation split.
        class_names: the C class names.
        device: where the model runs.
        autocast: training's AMP context factory.
        save: writes the bundle (called with the best record on each improvement).
        best: the best record of a resumed run, or None.
        is_main: rank 0, the only process that validates and writes.
    """
    if not is_main:
        return ()
    evaluator = None
    handlers: list[Any] = []
    if batches is not None:
        scores = ValidationScores(class_names, getattr(batches, "dataset", None))
        evaluator = SupervisedEvaluator(
            device=device,
            val_data_loader=batches,
            network=classifier,
            iteration_update=evaluation_step(classifier, autocast),
            key_val_metric={"val_mAP": ValidationMAP(scores)},
            additional_metrics={"val_scores": scores},
            decollate=False,
        )
        quiet_termination(evaluator)
        handlers.append(ValidationHandler(interval=1, validator=evaluator, epoch_level=True))
    return (*handlers, BestModel(evaluator, save, best))


def best_record(handlers: tuple[Any, ...]) -> dict[str, Any] | None:
    """The best-model record of a stage's validation handlers (main process), else None."""
    return handlers[-1].state_dict() if handlers and isinstance(handlers[-1], BestModel) else None


def bundle_writer(
    inputs: RunInputs, out: Path, head: nn.Module, mdn: nn.Module | None, unit_norm: bool, feature_cache: bool = False
) -> Callable[[dict[str, Any]], Path]:
    """``save(best)``: ``RUN/model.pt`` from the current encoder and head (and the MDN the run trained), atomically.

    Args:
        inputs: the run's encoder, classes, normalisation, stain reference and input mpp.
        out: the run folder.
        head: the classifier's head.
        mdn: the mixture density network (kept for ``predict --uncertainty``), or None.
        unit_norm: the head reads unit-norm features (two-stage, probe, joint) or raw ones (asl).
        feature_cache: the head trained on the frozen encoder's cached features (``evaluate`` reads them back).
    """
    config = inputs.config
    e = config.encoder

    def save(best: dict[str, Any]) -> Path:
        mean, std = inputs.mean_std
        record = config.to_dict()
        return save_model_bundle(
            out,
            encoder=inputs.encoder,
            head=head,
            mdn=mdn,
            class_names=inputs.class_names,
            mean=mean,
            std=std,
            image_size=config.dataset.image_size,
            encoder_name=e.name,
            encoder_options=dict(e.options),
            normalize_features=unit_norm,
            dataset=DatasetSource.from_config_dict(record),
            training_config=record,
            best_val_map=best.get("map"),
            best_epoch=best.get("epoch"),
            mpp=inputs.input_mpp,
            stain_reference=inputs.stain,
            feature_cache=feature_cache,
        )

    return save
