"""The one batched forward pass: ``sigmoid(head(encoder(x)))`` over a loader, for every caller.

:func:`predict_batches` serves ``predict`` and ``evaluate`` (through :func:`run_bundle`), the probability pass of
Grad-CAM (:mod:`probmcl_med.inference.explain`), the feature cache (:mod:`probmcl_med.inference.features`) and
training's per-epoch validation (:mod:`probmcl_med.engine.validation`, whose evaluator runs :func:`forward_batch`,
this loop's step), so all of them see the same numbers.

Uncertainty (``mdn=``): when the bundle keeps the stage-1 mixture density network, each input also gets, per class
k, the mixture weight ``pi_k`` and the variance ``var_k`` that the MDN assigns to the class's component for the
encoder's unit-norm features h(x) (paper Eq. 1, docs/math.md s.1-2). What it is: the spread the contrastive
stage gave that component; ``var_k >= 1`` with the paper's variance (``contrastive.variance_floor`` 1), and larger
values mean the MDN places the sample's class-k component less sharply. What it is not: a calibrated probability,
or a predictor of classification errors: the MDN is trained only by the stage-1 objective (NLL + PCL), and issue
25's study measured it against the classifier's own confidence (:data:`UNCERTAINTY_EVIDENCE`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from probmcl_med.bundle import ModelBundle
from probmcl_med.core.ood import OodStatistics
from probmcl_med.data.base import every_sample_skipped
from probmcl_med.errors import CheckpointError, UserError, one_line_message
from probmcl_med.models.heads import Classifier


class ProgressHook(Protocol):
    """What the loop reports to (the CLI implements it with a rich progress bar)."""

    def start(self, description: str, total: int) -> None:
        """A new pass over ``total`` samples begins."""

    def advance(self, count: int) -> None:
        """``count`` more samples are done."""


@dataclass
class BatchOutputs:
    """What :func:`predict_batches` collects, in loader order.

    Attributes:
        probs: (N, C) float64 probabilities, sigmoid of the logits.
        indices: (N,) dataset indices of the rows (samples a skip_bad dataset dropped are absent).
        targets: (N, C) float64 labels when the batches carry ``label``, else None.
        features: (N, H) float32 CPU features the head read, when asked for.
        pi: (N, C) MDN weights, when an MDN was given.
        var: (N, C) MDN variances, when an MDN was given.
        ood_distance: (N,) feature-space distances to the training set (:mod:`probmcl_med.core.ood`), when asked.
        logits: (N, C) float64 raw logits of the head (before any calibration), what temperatures are fitted on.
    """

    probs: np.ndarray
    indices: np.ndarray
    targets: np.ndarray | None = None
    features: torch.Tensor | None = None
    pi: np.ndarray | None = None
    var: np.ndarray | None = None
    ood_distance: np.ndarray | None = None
    logits: np.ndarray | None = None


UNCERTAINTY_EVIDENCE = (
    "measured, and it does not tell which predictions are wrong: on the test splits of issue 25's study (the paper's "
    "two-stage model, 3 seeds; realhisto and realmosaic, from scratch and from ImageNet weights; "
    "benchmarks/evidence/results_issue25/uncertainty.md) var_k ranked the wrong predictions at AUROC 0.45-0.48 "
    "(chance 0.5) and the mixture's entropy at 0.51-0.59, against 0.73-0.86 for the classifier's own |p - 0.5| and "
    "0.66-0.85 for the spread of a 3-seed ensemble; keeping the 80 % of decisions var_k trusted most left the error "
    "where it was (12.0-20.4 % against 11.9-19.8 % over all), |p - 0.5| lowered it to 6.4-14.7 %. To defer "
    "uncertain calls, use the probability's distance from the threshold or an ensemble"
)
"""What ``predict --uncertainty`` says of ``var_k`` (its help, its terminal line, ``meta.json``): issue 25 item 4,
protocol in benchmarks/evidence/README.md ("Item 4"), numbers from ``uncertainty_study.py``."""


def mdn_uncertainty(mdn: nn.Module, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mixture weight and variance that the MDN gives unit-norm features (math.md s.1).

    Args:
        mdn: the stage-1 mixture density network; ``mdn(h)`` returns a
            :class:`~probmcl_med.core.mixture.GaussianMixture` (or a ``(pi, mu, var)`` triple).
        features: (B, H) encoder features; L2-normalised here (a no-op for already unit-norm features).

    Returns:
        ``(pi, var)``, each (B, C) float32: ``pi_k`` in [0, 1] summing to 1 over k, ``var_k >= 1``.
    """
    out = mdn(F.normalize(features.float(), dim=1))
    if hasattr(out, "weights") and hasattr(out, "variances"):
        return out.weights.float(), out.variances.float()
    pi, _, var = out
    return pi.float(), var.float()


def require_mdn(bundle: ModelBundle, checkpoint: Any = None) -> None:
    """One-line CheckpointError (naming ``checkpoint``) unless the bundle kept its stage-1 MDN (for uncertainty)."""
    if bundle.mdn is None:
        where = f"checkpoint {checkpoint}" if checkpoint is not None else "this checkpoint"
        raise CheckpointError(
            f"{where} keeps no MDN (trained without a contrastive stage, or saved without it); --uncertainty "
            "needs one: drop --uncertainty or use a two-stage run's checkpoint"
        )


@contextlib.contextmanager
def _worker_errors() -> Iterator[None]:
    """Re-raise a UserError from a DataLoader worker with its original one-line message."""
    try:
        yield
    except UserError as exc:
        message = one_line_message(exc)
        if message == str(exc):
            raise
        raise type(exc)(message) from None


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode for the block, then each back in the mode it had (a frozen encoder stays eval)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _concat(parts: list[np.ndarray]) -> np.ndarray | None:
    return np.concatenate(parts) if parts else None


def forward_batch(classifier: Classifier, batch: dict[str, Any], device: torch.device) -> tuple[Any, Any]:
    """One batch through the model, in the caller's mode and context (eval, ``no_grad``, autocast): the (B, C)
    float32 logits ``head(h)`` and the (B, H) features ``h`` the head read (``batch["features"]`` when the batch
    carries cached features, else ``classifier.embed(batch["image"])``)."""
    if "features" in batch:
        h = batch["features"].to(device, non_blocking=True)
    else:
        h = classifier.embed(batch["image"].to(device, non_blocking=True))
    return classifier.head(h.to(classifier.head.weight.dtype)).float(), h


def predict_batches(
    classifier: Classifier,
    batches: Iterable[dict[str, Any] | None],
    device: torch.device,
    *,
    autocast: Callable[[], AbstractContextManager[Any]] | None = None,
    mdn: nn.Module | None = None,
    keep_features: bool = False,
    ood: OodStatistics | None = None,
    progress: ProgressHook | None = None,
    description: str = "predicting",
    allow_empty: bool = False,
    temperatures: Any = None,
) -> BatchOutputs:
    """sigmoid(head(features) / T) for every batch, in eval mode under ``torch.no_grad`` on ``device``.

    Args:
        classifier: encoder + head (the modes of its submodules are restored afterwards).
        batches: a DataLoader (or any iterable) of ``{"image": (B, 3, S, S)}`` or, for cached features, of
            ``{"features": (B, H)}`` (the head alone runs), each optionally with ``"label": (B, C)`` and
            ``"index": (B,)``; a ``None`` batch (every sample skipped by ``dataset.skip_bad``) is passed over.
        device: where the model runs.
        autocast: a factory of the context the forward pass runs in (training's AMP), or None (full precision).
        mdn: also collect the MDN's (pi, var) per class (:func:`mdn_uncertainty`).
        keep_features: also return the (N, H) features the head read (the frozen-encoder feature cache).
        ood: also return each input's distance to the training features (:meth:`OodStatistics.distances`).
        progress: told the total (``len(batches.dataset)``) first, then the number of samples after each batch.
        description: what the progress bar says.
        allow_empty: return empty outputs when samples there were but none readable (the caller names them), instead
            of raising.
        temperatures: (C,) per-class temperatures T of a calibration (:mod:`probmcl_med.calibration_file`): the
            probabilities are ``sigmoid(logits / T)``; None: ``sigmoid(logits)``. ``logits`` stay raw either way.

    Raises:
        DataError: every sample was unreadable and skipped (``skip_bad``), unless ``allow_empty``.
    """
    context = autocast or contextlib.nullcontext
    scale = None if temperatures is None else torch.as_tensor(np.asarray(temperatures, dtype=np.float64))
    probs, raw, indices, targets, features, pis, variances, distances = [], [], [], [], [], [], [], []
    offset = 0
    if progress is not None:
        progress.start(description, len(getattr(batches, "dataset", ())))
    with eval_mode(classifier), torch.no_grad(), _worker_errors():
        for batch in batches:
            if batch is None:
                continue
            with context():
                logits, h = forward_batch(classifier, batch, device)
            scaled = logits if scale is None else logits / scale.to(logits.device, torch.float32)
            probs.append(torch.sigmoid(scaled).double().cpu().numpy())  # fp32 sigmoid, as without a calibration
            raw.append(logits.double().cpu().numpy())
            n = h.shape[0]
            index = batch.get("index")
            indices.append(np.arange(offset, offset + n) if index is None else np.asarray(index, dtype=np.int64))
            offset += n
            if "label" in batch:
                targets.append(np.asarray(batch["label"], dtype=np.float64))
            if keep_features:
                features.append(h.float().cpu())
            if ood is not None:
                distances.append(ood.distances(h).double().cpu().numpy())
            if mdn is not None:
                pi, var = mdn_uncertainty(mdn, h)
                pis.append(pi.double().cpu().numpy())
                variances.append(var.double().cpu().numpy())
            if progress is not None:
                progress.advance(n)
    if (
        not probs and not allow_empty and len(getattr(batches, "dataset", ())) > 0
    ):  # samples there were, none readable (skip_bad)
        raise every_sample_skipped(batches.dataset)
    return BatchOutputs(
        probs=_concat(probs) if probs else np.zeros((0, classifier.head.out_features)),
        indices=_concat(indices) if indices else np.zeros(0, dtype=np.int64),
        targets=_concat(targets),
        features=torch.cat(features) if features else None,
        pi=_concat(pis),
        var=_concat(variances),
        ood_distance=_concat(distances),
        logits=_concat(raw) if raw else np.zeros((0, classifier.head.out_features)),
    )


def run_bundle(
    bundle: ModelBundle,
    loader: Iterable[dict[str, Any] | None],
    device: torch.device,
    *,
    uncertainty: bool = False,
    ood: bool = False,
    progress: ProgressHook | None = None,
    description: str = "predicting",
    allow_empty: bool = False,
) -> BatchOutputs:
    """:func:`predict_batches` with a loaded bundle (moved to ``device``), adding the MDN's (pi, var) on request,
    and with ``ood`` the distances to the training features when the bundle keeps their statistics.

    The one place where a model's calibration (``bundle.calibration``, from ``calibration.json``) is applied: every
    probability that predict, explain and evaluate report passes through here.

    Raises:
        CheckpointError: ``uncertainty`` asked for but the bundle has no MDN, or a ``calibration.json`` that could not be
            applied (stale, malformed: the message names the command that refits it).
    """
    if bundle.calibration_problem is not None:
        raise CheckpointError(bundle.calibration_problem)
    if uncertainty:
        require_mdn(bundle)
    bundle.to(device)
    return predict_batches(
        bundle.classifier(),
        loader,
        device,
        mdn=bundle.mdn if uncertainty else None,
        ood=bundle.ood if ood else None,
        progress=progress,
        description=description,
        allow_empty=allow_empty,
        temperatures=None if bundle.calibration is None else bundle.calibration.temperatures,
    )
