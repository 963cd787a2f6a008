"""Grid sweeps: a grid of config overrides x seeds, each a normal run folder, evaluated on the test split, aggregated.

::

    probmcl-med sweep --config configs/demo.yaml --grid contrastive.tau=0.1,0.2,0.5 --seeds 3 --out runs/sweep

One module per job: :mod:`~probmcl_med.sweep.grid` (the points and runs), :mod:`~probmcl_med.sweep.runner`
(training and scoring each run, resumably), :mod:`~probmcl_med.sweep.results` (mean +- std per point, the point
chosen on the validation split, the winner's config), :mod:`~probmcl_med.sweep.outputs` (CSV, markdown, plots, the
terminal table).
"""

from __future__ import annotations

from probmcl_med.sweep.grid import Point, PointSets, SweepRun, expand_grid, grid_points, parse_grid, split_values
from probmcl_med.sweep.outputs import markdown_table, parameter_plot, rich_table, write_outputs
from probmcl_med.sweep.results import (
    METRICS,
    aggregate,
    best_line,
    pick_best,
    summarize_metrics,
    write_best_config,
)
from probmcl_med.sweep.runner import MARKER, SweepResult, evaluate_run, run_sweep, train_run

__all__ = [
    "MARKER",
    "METRICS",
    "Point",
    "PointSets",
    "SweepResult",
    "SweepRun",
    "aggregate",
    "best_line",
    "evaluate_run",
    "expand_grid",
    "grid_points",
    "markdown_table",
    "parameter_plot",
    "parse_grid",
    "pick_best",
    "rich_table",
    "run_sweep",
    "split_values",
    "summarize_metrics",
    "train_run",
    "write_best_config",
    "write_outputs",
]
