"""A sweep's results: per grid point, the mean and sample standard deviation over seeds; the point chosen on the
validation split; and the winner's config as a file ``train --config`` takes.

:func:`aggregate` groups runs by grid point: mean and sample standard deviation (``ddof=1``; NaN for a single seed)
over seeds of mAP, CF1, OF1 and the mean per-class recall (all percent), on the test split and, when the runs have
it, the validation split. :func:`pick_best` ranks on the validation split only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from probmcl_med.errors import ConfigError
from probmcl_med.fileio import atomic_write_text

METRICS = ("mAP", "CF1", "OF1", "mean_recall")
"""What is aggregated per grid point (percent): the paper's table columns plus the mean per-class recall."""


def summarize_metrics(metrics: dict[str, Any]) -> dict[str, float | None]:
    """mAP, CF1, OF1 and the mean per-class recall (classes with positives) from :func:`multilabel_metrics`."""
    recalls = [c["recall"] for c in metrics["per_class"] if c["recall"] is not None]
    summary = metrics["summary"]
    return {
        "mAP": summary["mAP"],
        "CF1": summary["CF1"],
        "OF1": summary["OF1"],
        "mean_recall": float(np.mean(recalls)) if recalls else None,
    }


def aggregate(records: Sequence[dict[str, Any]], keys: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One row per grid point (first-seen order): its overrides, ``n`` seeds, ``<metric>_mean`` and ``<metric>_std``
    (test split) and ``valid_<metric>_mean``/``_std`` (validation split, when the runs have it).

    The std is the sample standard deviation over seeds (``ddof=1``), NaN with one seed; a metric that is None in
    some run (no class with positives) is averaged over the runs that have it.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(record["point"], []).append(record)
    rows = []
    for point, group in groups.items():
        row: dict[str, Any] = {"point": point, **{k: group[0]["overrides"].get(k, "") for k in keys}}
        row["n"] = len(group)
        row["seeds"] = [g["seed"] for g in group]
        for name, source in [(m, lambda g, m=m: g.get(m)) for m in METRICS] + [
            (f"valid_{m}", lambda g, m=m: (g.get("valid") or {}).get(m)) for m in METRICS
        ]:
            values = np.array([source(g) for g in group if source(g) is not None], dtype=np.float64)
            row[f"{name}_mean"] = float(values.mean()) if values.size else float("nan")
            row[f"{name}_std"] = float(values.std(ddof=1)) if values.size > 1 else float("nan")
        rows.append(row)
    return rows


def pick_best(rows: Sequence[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The grid point with the highest mean VALIDATION ``metric`` over its seeds (the test split never ranks).

    Raises:
        ConfigError: an unknown metric, or no point has validation numbers (a dataset without a validation split).
    """
    if metric not in METRICS:
        raise ConfigError(f"--pick-by {metric!r}: use one of {', '.join(METRICS)}")
    scored = [r for r in rows if not math.isnan(r.get(f"valid_{metric}_mean", float("nan")))]
    if not scored:
        raise ConfigError(
            f"--pick-by {metric}: no run has validation metrics (the dataset has no validation split); give it one "
            "(e.g. dataset.options.valid_fraction) so the sweep never ranks on the test split"
        )
    return max(scored, key=lambda r: r[f"valid_{metric}_mean"])


def best_line(best: dict[str, Any], metric: str) -> str:
    """``best by validation mAP: <point> (valid m ± s, test m ± s)``."""
    valid = f"{fmt(best[f'valid_{metric}_mean'])} ± {fmt(best[f'valid_{metric}_std'])}"
    test = f"{fmt(best[f'{metric}_mean'])} ± {fmt(best[f'{metric}_std'])}"
    return f"best by validation {metric}: {best['point']} (validation {valid}; test {test}, not used to choose)"


def write_best_config(out: Path, best: dict[str, Any], metric: str, path: Path) -> Path:
    """The winning point's resolved config (its first seed's ``config.yaml`` without ``seed`` and ``output_dir``)
    as a YAML file that ``probmcl-med train --config`` takes, written atomically."""
    run_dir = out / f"{best['point']}__seed{min(best['seeds'])}"  # SweepRun.name of the point's first seed
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    for key in ("seed", "output_dir"):
        config.pop(key, None)
    header = f"# {best_line(best, metric)}\n# from the sweep in {out}; train with: probmcl-med train --config {path}\n"
    return atomic_write_text(path, header + yaml.safe_dump(config, sort_keys=False))


def fmt(x: float | None, digits: int = 2) -> str:
    """A metric with ``digits`` decimals, ``-`` for None or NaN."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"
