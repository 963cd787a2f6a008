"""One evaluation, assembled once: the typed result that every output of ``evaluate`` renders.

:func:`assemble` computes the metrics at the thresholds (:func:`~probmcl_med.core.metrics.multilabel_metrics`),
their 95 % intervals and calibration (:func:`~probmcl_med.evaluation.report.add_statistics`), the verdict and the
findings (:mod:`.findings`) and, for tuned thresholds, what they change against 0.5 (:func:`.thresholds.
threshold_tradeoff`), once. The report folder (``report.md``, ``report.html``, ``metrics.json``:
:func:`~probmcl_med.evaluation.report.write_report`), ``evaluate --json`` (:meth:`EvaluationResult.to_dict`) and the
terminal tables (:func:`~probmcl_med.evaluation.render.render_result`) only render it, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from probmcl_med.core.metrics import (
    as_numpy,
    below_recall_floor,
    check_recall_floor,
    multilabel_metrics,
    thresholds_of,
)
from probmcl_med.evaluation.bootstrap import RESAMPLES
from probmcl_med.evaluation.findings import PRECISION_FLOOR, Findings, findings, same_split_warning, verdict
from probmcl_med.evaluation.statistics import add_statistics
from probmcl_med.evaluation.thresholds import OperatingPoint, threshold_tradeoff

if TYPE_CHECKING:
    from probmcl_med.evaluation.complexity import ModelCost

RECALL_FLOOR = 0.8
"""The default recall floor (``--recall-floor``): a class under it is named first."""


@dataclass(frozen=True)
class EvaluationResult:
    """Scores of one split, and everything said about them.

    Attributes:
        metrics: :func:`~probmcl_med.core.metrics.multilabel_metrics` at the thresholds, with per-class
            ``recall_ci``, ``precision_ci``, ``ap_ci``, ``ece``, ``summary.mAP_ci``, ``bootstrap`` and
            ``calibration`` (:func:`~probmcl_med.evaluation.statistics.add_statistics`); percent.
        scores: (N, C) probabilities.
        targets: (N, C) 0/1 labels.
        class_names: C names.
        operating_point: what the thresholds are.
        recall_floor: a fraction; classes under it are named first.
        precision_floor: a fraction; classes called with a precision under it are over-called.
        verdict: the one sentence every output opens with (:func:`~probmcl_med.evaluation.findings.verdict`).
        findings: the lines after it (:func:`~probmcl_med.evaluation.findings.findings`).
        meta: what the report says about the run (checkpoint, dataset, split, date, thresholds, ...), as text.
        tradeoff: the tuned thresholds against 0.5 (:func:`~probmcl_med.evaluation.thresholds.threshold_tradeoff`),
            or None.
        cost: the model's parameters and GMAC, or None (saved scores have no model).
        warnings: what to know before reading the numbers, one line each.
        temperature_scaling: with a calibration in use, the evaluated split's per-class ECE raw and calibrated
            (percent) and the fit made by this evaluation (``evaluate --calibrate``), or None.
    """

    metrics: dict[str, Any]
    scores: np.ndarray
    targets: np.ndarray
    class_names: tuple[str, ...]
    operating_point: OperatingPoint
    recall_floor: float
    precision_floor: float
    verdict: str
    findings: Findings
    meta: dict[str, str] = field(default_factory=dict)
    tradeoff: dict[str, Any] | None = None
    cost: ModelCost | None = None
    warnings: tuple[str, ...] = ()
    temperature_scaling: dict[str, Any] | None = None

    @property
    def thresholds(self) -> np.ndarray:
        """(C,) the thresholds the metrics were computed at."""
        return thresholds_of(self.metrics)

    @property
    def below_recall_floor(self) -> list[str]:
        """Names of the classes whose recall is under the floor, in class order."""
        return below_recall_floor(self.metrics, self.recall_floor)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``metrics.json`` and ``evaluate --json``: the metrics, then what is said about them."""
        document = {
            **self.metrics,
            "verdict": self.verdict,
            "meta": dict(self.meta),
            "recall_floor": self.recall_floor,
            "precision_floor": self.precision_floor,
            "below_recall_floor": self.below_recall_floor,
            "findings": self.findings.to_dict(),
            "operating_point": self.operating_point.to_dict(),
            "warnings": list(self.warnings),
        }
        if self.tradeoff is not None:
            op = self.operating_point
            document["threshold_tuning"] = {"recall_target": op.recall_target, "tuned_on": op.tuned_on, **self.tradeoff}
        if self.cost is not None:
            document["model_cost"] = self.cost.to_dict()
        if self.temperature_scaling is not None:
            document["temperature_scaling"] = self.temperature_scaling
        return document


def assemble(
    scores: Any,
    targets: Any,
    class_names: Sequence[str],
    thresholds: float | Sequence[float] | np.ndarray,
    *,
    operating_point: OperatingPoint,
    meta: dict[str, Any] | None = None,
    recall_floor: float = RECALL_FLOOR,
    precision_floor: float = PRECISION_FLOOR,
    resamples: int = RESAMPLES,
    compare_with: float | None = None,
    cost: ModelCost | None = None,
    warnings: Sequence[str] = (),
    temperature_scaling: dict[str, Any] | None = None,
) -> EvaluationResult:
    """Compute everything an evaluation says about ``scores`` at ``thresholds``, once.

    Args:
        scores: (N, C) probabilities.
        targets: (N, C) 0/1 labels.
        class_names: C names.
        thresholds: one threshold or (C,) per-class thresholds (``score >= threshold`` is a call).
        operating_point: what the thresholds are (:class:`~probmcl_med.evaluation.thresholds.OperatingPoint`).
        meta: the report's run lines (values shown with ``str``); ``date`` (now, UTC) is added when absent.
        recall_floor: a fraction in [0, 1].
        precision_floor: a fraction in [0, 1].
        resamples: bootstrap resamples for the 95 % intervals (0: none).
        compare_with: a single threshold to set the tuned thresholds against (0.5), or None.
        cost: the model's cost, or None.
        warnings: lines to show before the numbers (thresholds tuned on this very split add their own).
        temperature_scaling: see :attr:`EvaluationResult.temperature_scaling`.

    Raises:
        DataError: invalid scores/targets/thresholds, a floor that is not a fraction, negative resamples.
    """
    check_recall_floor(recall_floor)
    check_recall_floor(precision_floor)
    s, t = as_numpy(scores), as_numpy(targets)
    names = tuple(str(n) for n in class_names)
    metrics = multilabel_metrics(s, t, threshold=thresholds, class_names=names)
    metrics = add_statistics(metrics, s, t, resamples=resamples)
    header = {str(k): str(v) for k, v in (meta or {}).items()}
    header.setdefault("date", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    tradeoff = None
    if compare_with is not None:
        tradeoff = threshold_tradeoff(s, t, thresholds_of(metrics), list(names), baseline=compare_with)
    return EvaluationResult(
        metrics=metrics,
        scores=s,
        targets=t,
        class_names=names,
        operating_point=operating_point,
        recall_floor=float(recall_floor),
        precision_floor=float(precision_floor),
        verdict=verdict(metrics, recall_floor, operating_point),
        findings=findings(metrics, recall_floor, precision_floor, operating_point),
        meta=header,
        tradeoff=tradeoff,
        cost=cost,
        warnings=(*filter(None, [same_split_warning(operating_point)]), *warnings),
        temperature_scaling=temperature_scaling,
    )
