"""``probmcl-med evaluate``: a checkpoint on a split of its dataset, or saved scores against saved targets.

Thin: parse, call :mod:`probmcl_med.evaluation.run_eval` (or ``evaluate_files`` for ``--scores/--targets``), print.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

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


def render_tradeoff(tradeoff: dict[str, Any], console: Console) -> None:
    """Per class: tuned threshold, precision and recall at it and at the baseline, and the precision paid."""
    from probmcl_med.evaluation.render import print_table

    b = tradeoff["baseline_threshold"]
    table = Table(title=f"What the recall target costs: tuned thresholds vs {b:g} (percent)")
    for col in ("class", "threshold", f"recall @{b:g}", "recall tuned", f"precision @{b:g}", "precision tuned", "cost"):
        table.add_column(col, justify="left" if col == "class" else "right", no_wrap=True)

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.1f}"

    for r in tradeoff["per_class"]:
        table.add_row(
            r["name"],
            f"{r['threshold']:.4g}",
            fmt(r["recall_baseline"]),
            fmt(r["recall_tuned"]),
            fmt(r["precision_baseline"]),
            fmt(r["precision_tuned"]),
            f"{r['precision_cost']:+.1f}",
        )
    print_table(table, console)


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
            help="Fit one temperature per class on the valid split (temperature scaling) and report calibrated "
            "probabilities; with --save, predict/explain/evaluate use them from then on.",
        ),
    ] = False,
    gallery: Annotated[
        int,
        typer.Option(
            "--gallery",
            help="With --report: per class, this many confident misses and false alarms with Grad-CAM (0: none).",
        ),
    ] = 3,
    bootstrap: Annotated[
        int,
        typer.Option(
            "--bootstrap",
            help="Resamples of the images for the 95 % intervals (0: none; at 1000 a set of "
            "tens of thousands of images and 80 classes takes minutes).",
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
    """Evaluate a checkpoint on its dataset (metrics, per-class recall first, model cost), or saved scores."""
    # the library is imported here, not at the top: see probmcl_med/cli/__init__.py
    from probmcl_med.core.metrics import below_recall_floor, check_recall_floor
    from probmcl_med.evaluation.run_eval import parse_recall_target

    if scores is not None or targets is not None:
        if scores is None or targets is None:
            raise typer.BadParameter("--scores and --targets go together")
        if checkpoint is not None or tune_thresholds is not None or save or calibrate:
            raise typer.BadParameter(
                "--scores/--targets evaluate saved predictions: drop --checkpoint/--tune-thresholds/--calibrate/--save"
            )
        from probmcl_med.cli.evaluate_files import evaluate_files

        evaluate_files(
            scores,
            targets,
            report,
            threshold,
            recall_floor,
            as_json,
            precision_floor=precision_floor,
            resamples=bootstrap,
            overwrite=overwrite,
        )
        return
    if checkpoint is None:
        raise typer.BadParameter("give --checkpoint RUN (or --scores S --targets T)")
    check_recall_floor(recall_floor)
    check_recall_floor(precision_floor)
    if gallery < 0 or bootstrap < 0:
        raise typer.BadParameter("--gallery and --bootstrap take 0 or a positive number")
    recall_target = parse_recall_target(tune_thresholds) if tune_thresholds is not None else None

    from probmcl_med.evaluation.findings import findings
    from probmcl_med.evaluation.render import render_per_class_table, render_summary
    from probmcl_med.evaluation.report import MARKER
    from probmcl_med.evaluation.run_eval import evaluate_checkpoint, write_checkpoint_report

    if report is not None:  # refused before the evaluation, not after it
        check_replaceable_folder(report, MARKER, "report", "--report", overwrite)
    err = Console(stderr=True)
    with RichProgress(err, enabled=not as_json) as progress:
        result = evaluate_checkpoint(
            checkpoint,
            split,
            threshold=threshold,
            tune_recall=recall_target,
            save=save,
            calibrate=calibrate,
            resamples=bootstrap,
            batch_size=batch_size,
            device=device,
            workers=workers,
            root=root,
            progress=progress,
        )
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    if report is not None:
        write_checkpoint_report(report, result, recall_floor, precision_floor, gallery, overwrite)
    op = result.metrics["operating_point"]
    if as_json:
        document = {
            **result.metrics,
            "meta": result.meta,
            "model_cost": result.cost.to_dict(),
            "recall_floor": recall_floor,
            "precision_floor": precision_floor,
            "below_recall_floor": below_recall_floor(result.metrics, recall_floor),
            "findings": findings(result.metrics, recall_floor, precision_floor, op).to_dict(),
            "thresholds_saved": None if result.saved is None else str(result.saved),
            "warnings": result.warnings,
            "report": None if report is None else str(report),
        }
        sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
        return
    out = Console()
    out.print(f"[bold]{result.meta['checkpoint']}[/bold] on {result.meta['dataset']}, split {result.meta['split']}")
    out.print(f"thresholds: {result.threshold_source}", highlight=False, soft_wrap=True, markup=False)
    for key in ("probabilities", "calibration", "ECE per class, raw -> calibrated"):
        if key in result.meta:
            out.print(f"{key}: {result.meta[key]}", highlight=False, soft_wrap=True, markup=False)
    render_summary(result.metrics, recall_floor, out, precision_floor, op)
    render_per_class_table(result.metrics, recall_floor, out, precision_floor)
    if result.tradeoff is not None:
        render_tradeoff(result.tradeoff, out)
        if result.saved is None:
            out.print(f"thresholds not saved: add --save to write them beside {result.meta['checkpoint']}")
        else:
            out.print(f"thresholds saved to {result.saved} (model.pt unchanged)")
    out.print(f"model cost: {result.meta['model cost']}")
    if report is not None:
        out.print(f"report written to {report}/report.html")


def register(app: typer.Typer) -> None:
    """Attach ``evaluate`` to the app."""
    app.command("evaluate", cls=Command, epilog=EXAMPLE)(evaluate_command)
