"""Which part of a training step made its loss non-finite, in words (for :class:`~probmcl_med.errors.TrainingDiverged`).

A step's loss is checked before its backward pass (:class:`~probmcl_med.engine.steps.TrainStep`); when it is NaN
or infinite the step stops the run with one line naming the step and the component. The cause is found by looking
at the step's own tensors, outermost first: the encoder's features, the MDN's mixture, then each loss term, and for
the contrastive term the similarity and the overlap evaluated again on the same batch (without gradient).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from probmcl_med.engine.preflight import label_of
from probmcl_med.registry import LIKELIHOODS, OVERLAPS, SIMILARITIES


def is_finite(value: Any) -> bool:
    """True when every entry of a tensor (or a number) is finite."""
    return bool(torch.isfinite(torch.as_tensor(value).detach()).all())


def kind(value: Any) -> str:
    """``nan``, ``inf``, ``-inf`` (the first non-finite entry), or ``finite``."""
    flat = torch.as_tensor(value).detach().reshape(-1)
    bad = flat[~torch.isfinite(flat)]
    if not len(bad):
        return "finite"
    return "nan" if torch.isnan(bad[0]) else ("inf" if bad[0] > 0 else "-inf")


def _mixture_finite(mixture: Any) -> bool:
    return all(is_finite(t) for t in (mixture.weights, mixture.means, mixture.variances))


def contrastive_cause(objective: Any, forward: dict[str, Any], terms: dict[str, Tensor]) -> str:
    """The component behind a non-finite NLL + lambda * PCL (``objective``: a ``ProbMCLObjective``)."""
    h, mixture, labels = forward["h"], forward["mixture"], forward["labels"]
    if not is_finite(h):
        return f"the encoder's features are {kind(h)} (before the MDN): the encoder diverged; lower the learning rate"
    if not _mixture_finite(mixture):
        return "the MDN's mixture is non-finite from finite features: lower contrastive.lr"
    causes = []
    if "nll" in terms and not is_finite(terms["nll"]):
        causes.append(f"the likelihood term is {kind(terms['nll'])}: {label_of(LIKELIHOODS, objective.likelihood)}")
    if "pcl" in terms and not is_finite(terms["pcl"]):
        loss = objective.contrastive
        with torch.no_grad():
            sim = loss.similarity(mixture, mixture)
            overlap = loss.overlap(labels, labels)
        similarity, overlap_name = label_of(SIMILARITIES, loss.similarity), label_of(OVERLAPS, loss.overlap)
        if not is_finite(sim):
            causes.append(f"the contrastive term is {kind(terms['pcl'])}: {similarity} returned {kind(sim)} values")
        elif float(sim.max()) > 1.0 + 1e-4 or float(sim.min()) < -1e-4:
            causes.append(
                f"the contrastive term is {kind(terms['pcl'])}: {similarity} returned values in "
                f"[{float(sim.min()):.3g}, {float(sim.max()):.3g}], outside [0, 1]"
            )
        elif not is_finite(overlap):
            causes.append(
                f"the contrastive term is {kind(terms['pcl'])}: {overlap_name} returned {kind(overlap)} values"
            )
        else:
            causes.append(
                f"the contrastive term is {kind(terms['pcl'])} with finite similarities ({similarity}) and overlaps "
                f"({overlap_name}) at tau {loss.tau:g}: raise contrastive.tau"
            )
    return "; ".join(causes) or "the total of finite terms overflowed: lower contrastive.lambda or the learning rate"


def classifier_cause(loss_fn: Any, forward: dict[str, Any], terms: dict[str, Tensor]) -> str:
    """The component behind a non-finite classifier loss (``loss_fn``: ASL, focal or BCE on the logits)."""
    logits = forward["logits"]
    if not is_finite(logits):
        return f"the head's logits are {kind(logits)}: the encoder or the head diverged; lower the learning rate"
    return f"the classifier loss ({type(loss_fn).__name__}) is {kind(terms['loss'])} on finite logits"
