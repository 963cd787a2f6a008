"""``probmcl-med compare``: two or more models on the same images, the differences with their uncertainty.

Thin: :mod:`probmcl_med.evaluation.compare` scores and compares, :mod:`probmcl_med.evaluation.compare_report`
writes the folder; this parses and prints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from probmcl_med.cli.evaluate import RichProgress
from probmcl_med.cli.grammar import Command

EXAMPLE = (
    "Examples: probmcl-med compare runs/asl runs/probmcl --split test --out cmp/; "
    "probmcl-med compare --scores a.csv --scores b.csv --targets truth.csv --out cmp/"
)


def compare_command(
    runs: Annotated[
        list[Path] | None, typer.Argument(help="Run folders; the first is the reference.", show_default=False)
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write compare.html, compare.json and plots here.")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="Split of the runs' dataset: train, valid, test.")] = "test",
    scores: Annotated[
        list[Path] | None, typer.Option("--scores", help="Saved probabilities (repeat: one per model).")
    ] = None,
    targets: Annotated[Path | None, typer.Option("--targets", help="The 0/1 labels for --scores.")] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="One threshold for every model (default: each run's own).")
    ] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=1, help="Resamples of the images.")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print compare.json on stdout (no tables).")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 64,
    device: Annotated[str, typer.Option("--device", help="auto (GPU when present), cpu, cuda, cuda:N.")] = "auto",
    workers: Annotated[int, typer.Option("--workers", min=0, help="DataLoader workers.")] = 0,
    root: Annotated[str | None, typer.Option("--root", help="The dataset folder, if it moved.")] = None,
) -> None:
    """Compare models on the same images: the paper's metrics side by side, mAP and per-class AP differences with
    95 % paired bootstrap intervals and p-values."""
    # the library is imported here, not at the top: see probmcl_med/cli/__init__.py
    if runs and (scores or targets):
        raise typer.BadParameter("give run folders, or --scores files with one --targets, not both")
    if not runs and not scores:
        raise typer.BadParameter("give two or more run folders, or --scores A --scores B --targets T")
    if scores and targets is None:
        raise typer.BadParameter("--scores needs --targets (the labels of the images)")
    from probmcl_med.runpaths import resolve_bundle_path

    for run in runs or []:
        resolve_bundle_path(run, option="RUN folder")  # a wrong path is refused before torch is imported
    from probmcl_med.evaluation.compare import compare_runs, compare_score_files
    from probmcl_med.evaluation.compare_report import conclusion, write_comparison

    if scores:
        comparison = compare_score_files(scores, targets, threshold=threshold, resamples=bootstrap)
    else:
        with RichProgress(Console(stderr=True), enabled=not as_json) as progress:
            comparison = compare_runs(runs or [], split, threshold=threshold, resamples=bootstrap,
                                      batch_size=batch_size, device=device, workers=workers, root=root,
                                      progress=progress)  # fmt: skip
    if out is not None:
        write_comparison(out, comparison)
    if as_json:
        sys.stdout.write(json.dumps(comparison.to_dict(), indent=2) + "\n")
        return
    console = Console()
    n = int(comparison.targets.shape[0])
    for delta in comparison.deltas:
        console.print(conclusion(delta, n).replace("**", ""), highlight=False, soft_wrap=True, markup=False)
    table = Table(title=f"{comparison.split}: {n} images (percent)")
    for column in ("model", "mAP (95 % CI)", "CP", "CR", "CF1", "OP", "OR", "OF1"):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=True)
    from probmcl_med.evaluation.render import fmt, fmt_ci

    for model, metrics in zip(comparison.models, comparison.metrics, strict=True):
        s = metrics["summary"]
        table.add_row(
            model.label, fmt_ci(s["mAP"], s.get("mAP_ci")), *(fmt(s[k]) for k in ("CP", "CR", "CF1", "OP", "OR", "OF1"))
        )
    console.print(table)
    if out is not None:
        console.print(f"comparison written to {out}/compare.html", highlight=False)


def register(app: typer.Typer) -> None:
    """Attach ``compare`` to the app."""
    app.command("compare", cls=Command, epilog=EXAMPLE)(compare_command)
