"""Evaluation: the paper's metrics, recall-tuned thresholds, score/target files, one typed result per evaluation
(:class:`EvaluationResult`, built by :func:`assemble`), report folders and rendering.

Conventions (threshold rule ``score >= threshold``, percentages, classes without positives, tied scores) are stated
once, in :mod:`probmcl_med.core.metrics`.

Public names, imported on first use (PEP 562): the report pulls in the Grad-CAM gallery and with it torch and MONAI,
which the command line must not wait for before it can refuse a wrong option (``benchmarks/bench_refusal.py``)::

    from probmcl_med.evaluation import (
        EvaluationResult, OperatingPoint, assemble, evaluate_files, write_report, render_result,
        render_per_class_table, load_scores_targets, multilabel_metrics, average_precision, below_recall_floor,
        precision_recall_points, threshold_tradeoff, tune_thresholds, FALLBACK_THRESHOLD, THRESHOLD_RULE,
    )
"""

from __future__ import annotations

from probmcl_med.lazy import lazy_getattr

_EXPORTS = {
    "probmcl_med.core.metrics": (
        "THRESHOLD_RULE",
        "average_precision",
        "below_recall_floor",
        "multilabel_metrics",
        "precision_recall_points",
    ),
    "probmcl_med.evaluation.files": ("evaluate_files",),
    "probmcl_med.evaluation.io": ("load_scores_targets",),
    "probmcl_med.evaluation.render": ("render_per_class_table", "render_result"),
    "probmcl_med.evaluation.report": ("write_report",),
    "probmcl_med.evaluation.result": ("EvaluationResult", "assemble"),
    "probmcl_med.evaluation.thresholds": (
        "FALLBACK_THRESHOLD",
        "OperatingPoint",
        "threshold_tradeoff",
        "tune_thresholds",
    ),
}
"""Each public name's module: imported on first use of one of its names."""

__all__ = sorted(name for names in _EXPORTS.values() for name in names)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
