"""95 % intervals and calibration added to a metrics dict: what every evaluation output reports beside the numbers."""

from __future__ import annotations

from typing import Any

from probmcl_med.core.metrics import thresholds_of
from probmcl_med.errors import DataError
from probmcl_med.evaluation.bootstrap import RESAMPLES, bootstrap_intervals
from probmcl_med.evaluation.calibration import calibration_summary


def add_statistics(
    metrics: dict[str, Any], scores: Any, targets: Any, *, resamples: int = RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """``metrics`` with 95 % bootstrap intervals and calibration added (a new dict; ``metrics`` is not changed).

    Adds per class ``recall_ci``, ``precision_ci``, ``ap_ci`` ([lo, hi] percent or None) and ``ece`` (percent);
    ``summary.mAP_ci``; ``bootstrap`` (the method; None with ``resamples=0``, which leaves every interval None) and
    ``calibration`` (overall ECE and the reliability table). The intervals are at the thresholds the metrics were
    computed with.
    """
    if resamples < 0:
        raise DataError(f"--bootstrap {resamples}: give a number of resamples, or 0 for no intervals")
    if resamples:
        intervals = bootstrap_intervals(scores, targets, thresholds_of(metrics), resamples=resamples, seed=seed)
    else:
        none = dict.fromkeys(("recall_ci", "precision_ci", "ap_ci"))
        intervals = {"per_class": [dict(none) for _ in metrics["per_class"]], "mAP_ci": None, "method": None}
    calibration = calibration_summary(scores, targets)
    per_class = [
        {**row, **ci, "ece": ece}
        for row, ci, ece in zip(metrics["per_class"], intervals["per_class"], calibration["per_class_ece"], strict=True)
    ]
    return {
        **metrics,
        "summary": {**metrics["summary"], "mAP_ci": intervals["mAP_ci"]},
        "per_class": per_class,
        "bootstrap": intervals["method"],
        "calibration": {k: v for k, v in calibration.items() if k != "per_class_ece"},
    }
