"""``probmcl-med evaluate``: a checkpoint on a split of its dataset, or saved scores against saved targets.

Thin: parse, call :mod:`probmcl_med.evaluation.run_eval` (or :mod:`probmcl_med.evaluation.files` for
``--scores/--targets``), then render the one :class:`~probmcl_med.evaluation.result.EvaluationResult`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from probmcl_med.cli.grammar import Command
from probmcl_med.fileio import OVERWRITE_HELP, check_replaceable_folder

EXAMPLE = (
    "Examples: probmcl-med evaluate --checkpoint runs/adp --split test --report reports/adp-test; "
    "probmcl-med evaluate --checkpoint runs/adp --tune-thresholds recall=0.95 --save --report reports/adp-r95; "
    "probmcl-med evaluate --checkpoint runs/adp --calibrate --save; "
    "probmcl-med evaluate --scores scores.csv --targets targets.csv"
)


class RichProgress:
    """A :class:`~probmcl_med.inference.loop.ProgressHook` drawing a rich progress bar on stderr (hidden when done)."""

    def __init__(self, console: Console | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            transient=True,
            disable=not enabled,
        )
        self.task: Any = None

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, description: str, total: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(description, total=total)

    def advance(self, count: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, count)


def evaluate_command(
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", "-c", help="Run folder (or its model.pt) to evaluate.")
    ] = None,
    split: Annotated[
        str, typer.Option("--split", help="Split of the checkpoint's dataset: train, valid, test.")
    ] = "test",
    report: Annotated[
        Path | None, typer.Option("--report", help="Write a report folder here (metrics.json, CSV, plots, HTML).")
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold", help="Decision threshold for every class (default: the run's thresholds.json, else 0.5)."
        ),
    ] = None,
    recall_floor: Annotated[
        float,
        typer.Option("--recall-floor", min=0.0, max=1.0, help="Highlight classes whose recall is under this fraction."),
    ] = 0.8,
    precision_floor: Annotated[
        float,
        typer.Option("--precision-floor", help="Classes called with a precision under this fraction are over-called."),
    ] = 0.5,
    tune_thresholds: Annotated[
        str | None,
        typer.Option(
            "--tune-thresholds",
            help="recall=R: per class, the highest threshold keeping recall >= R on the valid split, used here; "
            "reported only, unless --save.",
        ),
    ] = None,
    save: Annotated[
        bool,
        typer.Option(
            "--save",
            help="With --tune-thresholds: write them to thresholds.json beside model.pt; with --calibrate: the "
            "temperatures to calibration.json.",
        ),
    ] = False,
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate",
            help="Fit a temperature per class on the valid split; with --save, every later command uses them.",
        ),
    ] = False,
    gallery: Annotated[
        int,
        typer.Option(
            "--gallery",
            help="With --report: per class, this many confident misses and false alarms.",
        ),
    ] = 3,
    bootstrap: Annotated[
        int,
        typer.Option(
            "--bootstrap",
            help="Resamples of the images for the 95 % intervals (0: none).",
        ),
    ] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON (no tables).")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 64,
    device: Annotated[str, typer.Option("--device", help="auto (GPU when present), cpu, cuda, cuda:N.")] = "auto",
    workers: Annotated[
        int | None, typer.Option("--workers", min=0, help="DataLoader workers (default: the run config's).")
    ] = None,
    root: Annotated[
        str | None,
        typer.Option("--root", help="The dataset folder, if it moved since training (default: the one it trained on)."),
    ] = None,
    scores: Annotated[
        Path | None, typer.Option("--scores", help="Saved probabilities (CSV with class-name header, or .npy).")
    ] = None,
    targets: Annotated[Path | None, typer.Option("--targets", help="Saved 0/1 labels for --scores.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
) -> None:
    """Evaluate a checkpoint on its dataset (metrics, per-class recall first, model cost), or saved scores.

    --calibrate fits one temperature per class on the valid split (temperature scaling) and reports calibrated
    probabilities; with --save they go to calibration.json and predict, explain and evaluate use them from then on.
    """
    # the library is imported here, not at the top (see probmcl_med/cli/__init__.py), and only once the options and
    # paths are known to be good: a refusal does not wait for torch (benchmarks/bench_refusal.py)
    from probmcl_med.core.metrics import check_recall_floor
    from probmcl_med.evaluation.thresholds import parse_recall_target
    from probmcl_med.runpaths import resolve_bundle_path

    if gallery < 0:
        raise typer.BadParameter("--gallery takes 0 or a positive number")
    check_recall_floor(recall_floor)
    check_recall_floor(precision_floor)
    floors = {"recall_floor": recall_floor, "precision_floor": precision_floor, "resamples": bootstrap}
    err = Console(stderr=True)
    if scores is not None or targets is not None:
        if scores is None or targets is None:
            raise typer.BadParameter("--scores and --targets go together")
        if checkpoint is not None or tune_thresholds is not None or save or calibrate:
            raise typer.BadParameter(
                "--scores/--targets evaluate saved predictions: drop --checkpoint/--tune-thresholds/--calibrate/--save"
            )
        from probmcl_med.evaluation.files import evaluate_files
        from probmcl_med.evaluation.report import MARKER, write_report

        if report is not None:  # refused before the evaluation, not after it
            check_replaceable_folder(report, MARKER, "report", "--report", overwrite)
        result = evaluate_files(scores, targets, threshold=threshold, **floors)
        if report is not None:
            write_report(report, result, overwrite=overwrite)
    else:
        if checkpoint is None:
            raise typer.BadParameter("give --checkpoint RUN (or --scores S --targets T)")
        recall_target = parse_recall_target(tune_thresholds) if tune_thresholds is not None else None
        resolve_bundle_path(checkpoint)
        from probmcl_med.evaluation.report import MARKER

        if report is not None:  # refused before the evaluation, not after it
            check_replaceable_folder(report, MARKER, "report", "--report", overwrite)
        from probmcl_med.evaluation.run_eval import evaluate_checkpoint, write_checkpoint_report

        with RichProgress(err, enabled=not as_json) as progress:
            evaluation = evaluate_checkpoint(checkpoint, split, threshold=threshold, tune_recall=recall_target,
                                             save=save, calibrate=calibrate, batch_size=batch_size, device=device,
                                             workers=workers, root=root, progress=progress, **floors)  # fmt: skip
        result = evaluation.result
        if report is not None:
            write_checkpoint_report(report, evaluation, gallery, overwrite)
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    if as_json:
        document = {**result.to_dict(), "report": None if report is None else str(report)}
        sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
        return
    from probmcl_med.evaluation.render import render_result

    out = Console()
    meta = result.meta
    out.print(f"[bold]{meta['checkpoint']}[/bold] on {meta['dataset']}, split {meta['split']}", highlight=False)
    render_result(result, out)
    saved = result.operating_point.saved
    if result.operating_point.recall_target is not None:
        if saved is None:
            out.print(f"thresholds not saved: add --save to write them beside {meta['checkpoint']}")
        else:
            out.print(f"thresholds saved to {saved} (model.pt unchanged)")
    if report is not None:
        out.print(f"report written to {report}/report.html")


def register(app: typer.Typer) -> None:
    """Attach ``evaluate`` to the app."""
    app.command("evaluate", cls=Command, epilog=EXAMPLE)(evaluate_command)
