"""``evaluate --calibrate``: fit per-class temperatures on the validation split and put them to use.

The fit is :func:`probmcl_med.core.temperature.fit_temperatures` on the raw validation logits; with ``--save`` the
temperatures go to ``calibration.json`` beside ``model.pt`` (:mod:`probmcl_med.calibration_file`), else they are
used for this evaluation only. Either way the bundle in memory gets them, so the evaluated split's probabilities,
its ECE and any thresholds tuned in the same call are on the calibrated scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from probmcl_med.bundle import ModelBundle
from probmcl_med.calibration_file import Calibration, save_calibration, thresholds_for
from probmcl_med.core.temperature import binary_nll, calibrated_probabilities, fit_temperatures
from probmcl_med.errors import CheckpointError
from probmcl_med.evaluation.calibration import expected_calibration_error
from probmcl_med.operating_point import read_thresholds


def per_class_ece(probs: np.ndarray, targets: np.ndarray) -> list[float]:
    """(C,) ECE of each class in percent (10 equal-width bins, :mod:`probmcl_med.evaluation.calibration`)."""
    return [100.0 * expected_calibration_error(probs[:, c], targets[:, c]) for c in range(probs.shape[1])]


def fit_calibration(
    bundle: ModelBundle, logits: np.ndarray, targets: np.ndarray, model_path: Path, *, save: bool, split_name: str
) -> tuple[Calibration, dict[str, Any]]:
    """Fit on the validation split's raw ``logits`` (N, C) and ``targets``; install the result in ``bundle``.

    Returns:
        The calibration (saved to ``calibration.json`` when ``save``) and a summary: per class the temperature and the
        validation NLL and ECE before and after (percent for ECE).
    """
    temperatures = fit_temperatures(logits, targets)
    ones = np.ones_like(temperatures)
    summary = {
        "fitted_on": split_name,
        "samples": len(logits),
        "temperatures": temperatures.tolist(),
        "nll_before": binary_nll(logits, targets, ones).tolist(),
        "nll_after": binary_nll(logits, targets, temperatures).tolist(),
        "ece_before": per_class_ece(calibrated_probabilities(logits, ones), targets),
        "ece_after": per_class_ece(calibrated_probabilities(logits, temperatures), targets),
    }
    if save:
        diagnostics = {k: summary[k] for k in ("nll_before", "nll_after", "ece_before", "ece_after")}
        calibration = save_calibration(
            model_path,
            bundle.class_names,
            temperatures,
            split="valid",
            split_name=split_name,
            samples=len(logits),
            diagnostics=diagnostics,
        )
    else:
        calibration = Calibration(tuple(temperatures.tolist()), "valid", split_name, _now(), samples=len(logits))
    install(bundle, calibration, model_path)
    return calibration, {**summary, "saved": None}


def install(bundle: ModelBundle, calibration: Calibration, model_path: Path) -> None:
    """Make ``calibration`` the bundle's, and re-derive its tuned thresholds on the new scale (or why they no longer
    apply: thresholds tuned on another calibration are stale)."""
    bundle.calibration, bundle.calibration_problem = calibration, None
    if bundle.tuned is None and bundle.threshold_problem is None:
        return
    try:
        tuned = thresholds_for(read_thresholds(model_path, bundle.class_names), calibration, model_path)
    except CheckpointError as exc:
        bundle.tuned, bundle.thresholds, bundle.threshold_problem = None, None, str(exc)
        return
    bundle.tuned, bundle.threshold_problem = tuned, None
    bundle.thresholds = None if tuned is None else list(tuned.values)


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")
