"""Running a sweep: every (point, seed) not finished yet trained and scored, then the results written.

:func:`run_sweep` runs each (point, seed) as ``load_config(FILE, [--set ..., point overrides, seed=S,
output_dir=OUT/NAME])`` (with ``--epochs`` applied after them, :func:`probmcl_med.config.with_epochs`) through
:func:`probmcl_med.engine.run.train` in this process, then scores the test split with
:func:`probmcl_med.evaluation.run_eval.score_split` and :func:`~probmcl_med.core.metrics.multilabel_metrics` at
threshold 0.5, and writes ``OUT/NAME/test_metrics.json`` atomically. That file is the completion marker: a run that
has it is not run again (the sweep is resumable); a run folder with checkpoints but no marker is resumed from its
newest checkpoint.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probmcl_med.bundle import load_model_bundle
from probmcl_med.config import ConfigWarning, load_config, with_epochs
from probmcl_med.config.loading import DroppedSet
from probmcl_med.core.metrics import multilabel_metrics
from probmcl_med.engine.checkpoint import IncompatibleCheckpoint
from probmcl_med.engine.run import train
from probmcl_med.errors import CheckpointError, ConfigError, DataError
from probmcl_med.evaluation.run_eval import score_split
from probmcl_med.fileio import atomic_write_text
from probmcl_med.runlock import RunLock
from probmcl_med.sweep.grid import Point, PointSets, SweepRun, expand_grid, swept_keys
from probmcl_med.sweep.outputs import rich_table, write_outputs
from probmcl_med.sweep.results import aggregate, best_line, fmt, pick_best, summarize_metrics, write_best_config

MARKER = "test_metrics.json"
"""Written last in a run folder: the run is finished and evaluated."""


@dataclass
class SweepResult:
    """What :func:`run_sweep` produced: per-run records, per-point rows, the files written, runs trained now."""

    records: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    files: list[Path] = field(default_factory=list)
    trained: int = 0
    best: dict[str, Any] | None = None


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
    epochs: int | None = None,
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
        epochs: ``--epochs``: every run's length in passes, whatever its mode (:func:`~probmcl_med.config.with_epochs`).

    Raises:
        ConfigError: a bad override in any run (all configs are validated before anything trains).
        RunFolderBusy: another sweep uses ``out``, or another process trains into one of its run folders.
    """
    out = Path(out)
    runs = expand_grid(points, seeds)
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError("two grid points give the same run folder name; make the values differ after sanitising")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DroppedSet)
        configs = [run_config(config_path, run, out, sets, point_sets, epochs) for run in runs]
    check_sets_apply(sets, configs, caught)
    with RunLock(out, "sweep"):  # one sweep per folder; each run's train() locks its own run folder as well
        return _run_and_write(runs, configs, points, out, console, plots, pick_by, write_best)


def run_config(
    config_path: str | Path | None,
    run: SweepRun,
    out: Path,
    sets: Sequence[str],
    point_sets: PointSets | None,
    epochs: int | None,
) -> Any:
    """The validated config of one run: the file, ``--set``, the point's overrides, its seed and folder, ``--epochs``.

    Raises:
        ConfigError: the run's config does not validate; the message names the grid point.
    """
    try:
        overrides = [*sets, *run.overrides(out / run.name, point_sets)]
        config = load_config(config_path, overrides=overrides, optional=sets)
        return config if epochs is None else with_epochs(config, epochs)
    except ConfigError as exc:
        if not run.point:
            raise
        raise ConfigError(f"grid point {run.point_name}: {exc}") from None


def check_sets_apply(sets: Sequence[str], configs: Sequence[Any], caught: list[warnings.WarningMessage]) -> None:
    """Every ``--set`` of a sweep applies to the runs whose mode reads it: one warning line per ``--set`` that some
    modes dropped, an error for one that no run reads (other warnings are passed on).

    Raises:
        ConfigError: a ``--set`` that the mode of no grid point reads.
    """
    dropped: dict[str, set[str]] = {}
    for warning in caught:
        if isinstance(warning.message, DroppedSet):
            dropped.setdefault(warning.message.text, set()).add(warning.message.mode)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    modes = {c.mode for c in configs}
    for text in sets:
        skipped = dropped.get(text, set())
        if skipped >= modes:
            raise ConfigError(f"--set {text}: no grid point's mode ({', '.join(sorted(modes))}) reads it; drop it")
        if skipped:
            used = ", ".join(sorted(modes - skipped))
            warnings.warn(f"--set {text}: applies to the runs of mode {used} only", ConfigWarning, stacklevel=3)


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
            _say(console, f"[{i + 1}/{len(runs)}] {run.name}: done earlier (mAP {fmt(record.get('mAP'))})")
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
            _say(console, f"    mAP {fmt(record['mAP'])}  CF1 {fmt(record['CF1'])}  ({seconds:.0f} s)")
        if pick_by is not None and "valid" not in record:  # a run finished by an older sweep: score it now
            record = {**record, "valid": _valid_metrics(run_dir, config)}
            atomic_write_text(marker, json.dumps(record, indent=2) + "\n")
        records.append(record)
    keys = swept_keys(points)
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


def _say(console: Any, text: str) -> None:
    if console is not None:
        console.print(text, highlight=False, markup=False)
