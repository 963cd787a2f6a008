"""Grid sweeps: a grid of config overrides x seeds, each a normal run folder, evaluated on the test split, aggregated.

::

    probmcl-med sweep --config configs/demo.yaml --grid contrastive.tau=0.1,0.2,0.5 --grid mode=two-stage,joint \\
        --seeds 3 --out runs/sweep

1. :func:`parse_grid` reads ``KEY=V1,V2,...`` (commas inside ``[...]``/``{...}`` do not split: ``[32,16]`` is one
   value); :func:`expand_grid` takes the Cartesian product of the grid (first ``--grid`` outermost) and the seeds
   (innermost). A grid point is an ordered tuple of ``(key, value)`` overrides; any list of points works too
   (``benchmarks/evidence`` passes hand-made arms).
2. :func:`run_sweep` runs each (point, seed) as ``load_config(FILE, [--set ..., point overrides, seed=S,
   output_dir=OUT/NAME])`` through :func:`probmcl_med.engine.run.train` in this process, then scores the test split
   with :func:`probmcl_med.evaluation.run_eval.score_split` and :func:`~probmcl_med.core.metrics.
   multilabel_metrics` at threshold 0.5, and writes ``OUT/NAME/test_metrics.json`` atomically. That file is the
   completion marker: a run that has it is not run again (the sweep is resumable); a run folder with checkpoints but
   no marker is resumed from its newest checkpoint.
3. :func:`aggregate` groups runs by grid point: mean and sample standard deviation (``ddof=1``; NaN for a single
   seed) over seeds of mAP, CF1, OF1 and the mean per-class recall (all percent). :func:`write_outputs` writes
   ``runs.csv`` (one row per run), ``sweep.csv`` and ``sweep.md`` (one row per point) and ``plot_<key>.png`` per
   swept key (:func:`probmcl_med.evaluation.plots.sweep_figure`: the metric's mean with the std over seeds as
   error bars against that key's values, points side by side per combination of the other keys).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.table import Table

from probmcl_med.bundle import load_model_bundle
from probmcl_med.config import load_config
from probmcl_med.core.metrics import multilabel_metrics
from probmcl_med.engine.checkpoint import IncompatibleCheckpoint
from probmcl_med.engine.run import train
from probmcl_med.errors import CheckpointError, ConfigError, DataError
from probmcl_med.evaluation.plots import sweep_plot
from probmcl_med.evaluation.run_eval import score_split
from probmcl_med.fileio import atomic_write_bytes, atomic_write_text
from probmcl_med.runlock import RunLock

METRICS = ("mAP", "CF1", "OF1", "mean_recall")
"""What is aggregated per grid point (percent): the paper's table columns plus the mean per-class recall."""

MARKER = "test_metrics.json"
"""Written last in a run folder: the run is finished and evaluated."""

Point = tuple[tuple[str, str], ...]
PointSets = Callable[[Point], list[str]]


@dataclass(frozen=True)
class SweepRun:
    """One training run of a sweep: a grid point and a seed."""

    point: Point
    seed: int

    @property
    def point_name(self) -> str:
        """``key=value+key=value`` with characters unsafe in file names replaced by ``_`` (``base`` when empty)."""
        if not self.point:
            return "base"
        return "+".join(f"{k}={_safe(v)}" for k, v in self.point)

    @property
    def name(self) -> str:
        """The run folder's name: ``<point name>__seed<S>``."""
        return f"{self.point_name}__seed{self.seed}"

    def overrides(self, output_dir: Path, point_sets: PointSets | None = None) -> list[str]:
        """``--set`` strings of this run: the point's overrides (or ``point_sets(point)``), the seed, the folder."""
        sets = point_sets(self.point) if point_sets is not None else [f"{k}={v}" for k, v in self.point]
        return [*sets, f"seed={self.seed}", f"output_dir={output_dir}"]


@dataclass
class SweepResult:
    """What :func:`run_sweep` produced: per-run records, per-point rows, the files written, runs trained now."""

    records: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    files: list[Path] = field(default_factory=list)
    trained: int = 0
    best: dict[str, Any] | None = None


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._,=-]", "_", str(text)).strip("_") or "_"


def split_values(text: str) -> list[str]:
    """``a,b,[1,2]`` -> ``["a", "b", "[1,2]"]``: commas split only outside brackets and braces."""
    values, depth, current = [], 0, []
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    values.append("".join(current).strip())
    return values


def parse_grid(texts: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["contrastive.tau=0.1,0.2", ...]`` -> ``[("contrastive.tau", ["0.1", "0.2"]), ...]`` (order kept).

    Raises:
        ConfigError: no ``=``, an empty key or value, a key given twice.
    """
    grid: list[tuple[str, list[str]]] = []
    for text in texts:
        if "=" not in text:
            raise ConfigError(f"--grid {text!r}: expected KEY=V1,V2,..., e.g. --grid contrastive.tau=0.1,0.2,0.5")
        key, raw = (part.strip() for part in text.split("=", 1))
        values = split_values(raw)
        if not key or any(not v for v in values):
            raise ConfigError(f"--grid {text!r}: empty key or value; write e.g. contrastive.tau=0.1,0.2,0.5")
        if key in [k for k, _ in grid]:
            raise ConfigError(f"--grid {key} is given twice; list all its values in one --grid {key}=V1,V2")
        if len(set(values)) != len(values):
            raise ConfigError(f"--grid {text!r}: a value is repeated; list each value once")
        grid.append((key, values))
    return grid


def grid_points(grid: Sequence[tuple[str, Sequence[str]]]) -> list[Point]:
    """The Cartesian product of the grid, first key outermost; ``[()]`` for an empty grid (one point, no override)."""
    keys = [k for k, _ in grid]
    return [tuple(zip(keys, combo, strict=True)) for combo in itertools.product(*(v for _, v in grid))]


def expand_grid(points: Sequence[Point], seeds: int | Sequence[int]) -> list[SweepRun]:
    """Every point x every seed (seeds innermost); ``seeds`` an int ``n`` means seeds ``0 .. n-1``."""
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ConfigError("--seeds must be at least 1")
    return [SweepRun(tuple(point), seed) for point in points for seed in seed_list]


# ----------------------------------------------------------------------------------------------------------------------
# Running and evaluating
# ----------------------------------------------------------------------------------------------------------------------


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


def evaluate_run(run_dir: Path, device: str = "auto", split: str = "test") -> dict[str, Any]:
    """Metrics of a finished run folder (its ``model.pt``) on one split (the test split by default), threshold 0.5."""
    bundle = load_model_bundle(run_dir)
    scored = score_split(bundle, split, checkpoint=run_dir, device=device, workers=0)
    metrics = multilabel_metrics(scored.scores, scored.targets, threshold=0.5, class_names=bundle.class_names)
    return {**summarize_metrics(metrics), "num_samples": metrics["num_samples"], "skipped": scored.skipped}


def train_run(config: Any, resume: bool) -> Any:
    """Train one run (the engine's :func:`~probmcl_med.engine.run.train`, no console output).

    Raises:
        CheckpointError: the run folder holds the checkpoints of another run (other classes or encoder).
    """
    try:
        return train(config, resume=resume)
    except IncompatibleCheckpoint as exc:
        raise CheckpointError(
            f"{exc.reason}: the sweep folder holds another sweep's run {config.output_dir}; give another --out"
        ) from None


def run_sweep(
    config_path: str | Path | None,
    points: Sequence[Point],
    seeds: int | Sequence[int],
    out: str | Path,
    sets: Sequence[str] = (),
    *,
    console: Any = None,
    plots: bool = True,
    point_sets: PointSets | None = None,
    pick_by: str | None = None,
    write_best: str | Path | None = None,
) -> SweepResult:
    """Train and evaluate every (point, seed) not finished yet, then aggregate and write the outputs.

    Args:
        config_path: the base YAML config (or a named config), None for the defaults.
        points: grid points (:func:`grid_points` or hand-made); each an ordered tuple of ``(key, value)``.
        seeds: number of seeds (0 .. n-1) or the seeds themselves.
        out: the sweep folder; each run is ``OUT/<run name>``.
        sets: ``--set`` overrides applied to every run before the point's.
        console: a rich Console for progress and the table (None: silent).
        plots: write one PNG per swept key.
        point_sets: maps a point to its ``--set`` overrides when its keys are labels rather than config keys
            (e.g. ``(("arm", "joint"), ("init", "pretrained"))`` -> several overrides); default ``key=value``.
        pick_by: rank the points by this metric's mean on the VALIDATION split (:func:`pick_best`).
        write_best: with ``pick_by``, write the winner's config here (:func:`write_best_config`).

    Raises:
        ConfigError: a bad override in any run (all configs are validated before anything trains).
        RunFolderBusy: another sweep uses ``out``, or another process trains into one of its run folders.
    """
    out = Path(out)
    runs = expand_grid(points, seeds)
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError("two grid points give the same run folder name; make the values differ after sanitising")
    configs = [load_config(config_path, overrides=[*sets, *run.overrides(out / run.name, point_sets)]) for run in runs]
    with RunLock(out, "sweep"):  # one sweep per folder; each run's train() locks its own run folder as well
        return _run_and_write(runs, configs, points, out, console, plots, pick_by, write_best)


def _run_and_write(
    runs: Sequence[SweepRun],
    configs: Sequence[Any],
    points: Sequence[Point],
    out: Path,
    console: Any,
    plots: bool,
    pick_by: str | None,
    write_best: str | Path | None,
) -> SweepResult:
    """The body of :func:`run_sweep` once every config is valid and the sweep folder is locked."""
    records, trained = [], 0
    for i, (run, config) in enumerate(zip(runs, configs, strict=True)):
        run_dir = out / run.name
        marker = run_dir / MARKER
        if marker.is_file() and (run_dir / "model.pt").is_file():
            record = json.loads(marker.read_text())
            _say(console, f"[{i + 1}/{len(runs)}] {run.name}: done earlier (mAP {_fmt(record.get('mAP'))})")
        else:
            _say(console, f"[{i + 1}/{len(runs)}] {run.name}: training")
            started = time.perf_counter()
            resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
            train_run(config, resume)
            seconds = time.perf_counter() - started
            trained += 1
            record = {
                "run": run.name,
                "point": run.point_name,
                "seed": run.seed,
                "overrides": dict(run.point),
                **evaluate_run(run_dir, device=config.device),
                "valid": _valid_metrics(run_dir, config),
                "train_seconds": round(seconds, 2),
            }
            atomic_write_text(marker, json.dumps(record, indent=2) + "\n")
            _say(console, f"    mAP {_fmt(record['mAP'])}  CF1 {_fmt(record['CF1'])}  ({seconds:.0f} s)")
        if pick_by is not None and "valid" not in record:  # a run finished by an older sweep: score it now
            record = {**record, "valid": _valid_metrics(run_dir, config)}
            atomic_write_text(marker, json.dumps(record, indent=2) + "\n")
        records.append(record)
    keys = _swept_keys(points)
    rows = aggregate(records, keys)
    files = write_outputs(out, records, rows, keys, plots=plots)
    best = None
    if pick_by is not None:
        best = pick_best(rows, pick_by)
        if write_best is not None:
            files.append(write_best_config(out, best, pick_by, Path(write_best)))
    if console is not None:
        console.print(rich_table(rows, keys))
        if best is not None:
            console.print(best_line(best, pick_by), highlight=False, markup=False)
        console.print(f"wrote {', '.join(str(f) for f in files)}", highlight=False)
    return SweepResult(records, rows, files, trained, best)


def _valid_metrics(run_dir: Path, config: Any) -> dict[str, Any] | None:
    """The run's validation-split metrics, or None when its dataset has no validation split."""
    try:
        return evaluate_run(run_dir, device=config.device, split=config.dataset.val_split)
    except DataError:
        return None


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
    valid = f"{_fmt(best[f'valid_{metric}_mean'])} ± {_fmt(best[f'valid_{metric}_std'])}"
    test = f"{_fmt(best[f'{metric}_mean'])} ± {_fmt(best[f'{metric}_std'])}"
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


def _say(console: Any, text: str) -> None:
    if console is not None:
        console.print(text, highlight=False, markup=False)


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _swept_keys(points: Sequence[Point]) -> list[str]:
    keys: list[str] = []
    for point in points:
        keys.extend(k for k, _ in point if k not in keys)
    return keys


# ----------------------------------------------------------------------------------------------------------------------
# Aggregation and outputs
# ----------------------------------------------------------------------------------------------------------------------


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


def _csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: (" ".join(map(str, v)) if isinstance(v, list) else v) for c, v in row.items()})
    return buffer.getvalue()


def table_cells(row: dict[str, Any], keys: Sequence[str]) -> list[str]:
    """One aggregated row as text: the swept values, ``n``, then ``mean ± std`` per metric."""
    cells = [str(row.get(k, "")) for k in keys] + [str(row["n"])]
    return cells + [f"{_fmt(row[f'{m}_mean'])} ± {_fmt(row[f'{m}_std'])}" for m in METRICS]


def markdown_table(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
    """``| key ... | n | mAP | CF1 | OF1 | mean recall |`` with ``mean +- std`` cells."""
    head = [*keys, "n", *METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(table_cells(row, keys)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def rich_table(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> Any:
    """The aggregated table for the terminal."""
    table = Table(title="sweep: test split, mean ± std over seeds (percent)")
    for column in [*keys, "n", *METRICS]:
        table.add_column(column, justify="left" if column in keys else "right")
    for row in rows:
        table.add_row(*table_cells(row, keys))
    return table


def write_outputs(
    out: Path,
    records: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    keys: Sequence[str],
    plots: bool = True,
) -> list[Path]:
    """``runs.csv``, ``sweep.csv``, ``sweep.md`` and ``plot_<key>.png`` per swept key, atomically."""
    out.mkdir(parents=True, exist_ok=True)
    flat = [{**r["overrides"], **{k: v for k, v in r.items() if k != "overrides"}} for r in records]
    run_columns = ["run", "point", *keys, "seed", *METRICS, "train_seconds"]
    point_columns = ["point", *keys, "n", "seeds", *(f"{m}_{s}" for m in METRICS for s in ("mean", "std"))]
    files = [
        atomic_write_text(out / "runs.csv", _csv_text(flat, run_columns)),
        atomic_write_text(out / "sweep.csv", _csv_text(rows, point_columns)),
        atomic_write_text(out / "sweep.md", markdown_table(rows, keys)),
    ]
    if plots:
        for key in keys:
            files.append(atomic_write_bytes(out / f"plot_{_safe(key)}.png", sweep_plot(rows, key, keys)))
    return [Path(f) for f in files]
