"""Evaluation: the paper's metrics, recall-tuned thresholds, score/target files, one typed result per evaluation
(:class:`EvaluationResult`, built by :func:`assemble`), report folders and rendering.

Conventions (threshold rule ``score >= threshold``, percentages, classes without positives, tied scores) are stated
once, in :mod:`probmcl_med.core.metrics`.
"""

from __future__ import annotations

from probmcl_med.core.metrics import (
    THRESHOLD_RULE,
    average_precision,
    below_recall_floor,
    multilabel_metrics,
    precision_recall_points,
)
from probmcl_med.evaluation.files import evaluate_files
from probmcl_med.evaluation.io import load_scores_targets
from probmcl_med.evaluation.render import render_per_class_table, render_result
from probmcl_med.evaluation.report import write_report
from probmcl_med.evaluation.result import EvaluationResult, assemble
from probmcl_med.evaluation.thresholds import (
    FALLBACK_THRESHOLD,
    OperatingPoint,
    threshold_tradeoff,
    tune_thresholds,
)

__all__ = [
    "FALLBACK_THRESHOLD",
    "THRESHOLD_RULE",
    "EvaluationResult",
    "OperatingPoint",
    "assemble",
    "average_precision",
    "below_recall_floor",
    "evaluate_files",
    "load_scores_targets",
    "multilabel_metrics",
    "precision_recall_points",
    "render_per_class_table",
    "render_result",
    "threshold_tradeoff",
    "tune_thresholds",
    "write_report",
]
