"""``evaluate --scores S --targets T``: the evaluation of a model's saved probabilities against saved labels.

No model and no torch here: the scores are a model's saved probabilities (CSV or .npy, see
:mod:`probmcl_med.evaluation.io`), so a result can be re-read, re-thresholded and re-reported at any time, and any
model (not only this package's) is measured with the same metrics.
"""

from __future__ import annotations

from pathlib import Path

from probmcl_med.evaluation.bootstrap import RESAMPLES
from probmcl_med.evaluation.findings import PRECISION_FLOOR
from probmcl_med.evaluation.io import load_scores_targets
from probmcl_med.evaluation.result import RECALL_FLOOR, EvaluationResult, assemble
from probmcl_med.evaluation.thresholds import OperatingPoint
from probmcl_med.operating_point import DEFAULT_THRESHOLD


def evaluate_files(
    scores: str | Path,
    targets: str | Path,
    *,
    threshold: float | None = None,
    recall_floor: float = RECALL_FLOOR,
    precision_floor: float = PRECISION_FLOOR,
    resamples: int = RESAMPLES,
) -> EvaluationResult:
    """Load scores and targets and assemble their evaluation at one threshold for every class.

    Args:
        scores: (N, C) probabilities, CSV (header = class names) or .npy.
        targets: (N, C) 0/1 labels, same format rules.
        threshold: the decision threshold for every class (positive when score >= threshold); None: 0.5.
        recall_floor: a fraction in [0, 1]; classes with recall under it are named first.
        precision_floor: a fraction in [0, 1]; classes called with precision under it are over-called.
        resamples: bootstrap resamples for the 95 % intervals (0: none).

    Raises:
        DataError: a bad file (one line naming it, see :func:`~probmcl_med.evaluation.io.load_scores_targets`), a
            threshold outside [0, 1], a floor that is not a fraction.
    """
    s, t, names = load_scores_targets(scores, targets)
    if threshold is None:
        value, description = DEFAULT_THRESHOLD, f"{DEFAULT_THRESHOLD:g} for every class (default)"
    else:
        value, description = float(threshold), f"--threshold {threshold:g} for every class"
    meta = {
        "checkpoint": "none (scores read from file)",
        "dataset": str(targets),
        "split": "as given in the files",
        "scores file": str(scores),
        "targets file": str(targets),
        "thresholds from": description,
    }
    return assemble(
        s,
        t,
        names,
        value,
        operating_point=OperatingPoint(description=description),
        meta=meta,
        recall_floor=recall_floor,
        precision_floor=precision_floor,
        resamples=resamples,
    )
