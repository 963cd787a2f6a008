"""``probmcl-med sweep``: a grid of config overrides x seeds, each a normal run folder, evaluated and aggregated.

Thin by design: parsing and printing here, everything else in :mod:`probmcl_med.sweep`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from probmcl_med.cli.grammar import Command

EPILOG = """\
Examples:

  probmcl-med sweep --config configs/demo.yaml --grid contrastive.tau=0.1,0.2,0.5 --seeds 3 --out runs/tau

  probmcl-med sweep --config configs/demo.yaml --grid mode=two-stage,joint \\
      --grid contrastive.likelihood=density,responsibility --seeds 2 --epochs 4

  probmcl-med sweep --config my.yaml --grid classifier.loss=bce,focal,asl \\
      --grid dataset.augment.policy=flip,randaugment --seeds 3 --pick-by mAP --write-best best.yaml

Run it again with the same --out to finish an interrupted sweep: runs with a test_metrics.json are not run again.
--pick-by ranks on the validation split only; the test split is reported, never used to choose.
"""


def sweep_command(
    config: Annotated[Path | None, typer.Option("--config", help="Base YAML run config (or a named config).")] = None,
    grid: Annotated[
        list[str] | None,
        typer.Option(
            "--grid",
            metavar="KEY=V1,V2",
            help="KEY=V1,V2,... swept values of a config key (repeatable; Cartesian product).",
        ),
    ] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Seeds per grid point (0 .. N-1).")] = 3,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            help="Every run's length in passes over the training set, whatever its mode (as train --epochs: "
            "two-stage divides it between its stages, each at least 1).",
        ),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="Override for every run, e.g. --set contrastive.epochs=2."),
    ] = None,
    root: Annotated[
        str | None,
        typer.Option("--root", help="The dataset folder of every run (the same as --set dataset.root=PATH)."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Sweep folder: one run folder per point and seed.")] = Path(
        "runs/sweep"
    ),
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip the PNG plot per swept key.")] = False,
    pick_by: Annotated[
        str | None,
        typer.Option("--pick-by", help="Rank the grid points by this metric on the VALIDATION split (mAP, CF1, ...)."),
    ] = None,
    write_best: Annotated[
        Path | None,
        typer.Option("--write-best", help="Write the winning point's config here (implies --pick-by mAP)."),
    ] = None,
) -> None:
    """Train every grid point with every seed, evaluate each on the test split, and aggregate mean ± std over seeds.

    Writes OUT/runs.csv (one row per run), OUT/sweep.csv and OUT/sweep.md (mean ± std of mAP, CF1, OF1 and mean
    per-class recall per grid point) and OUT/plot_<key>.png per swept key; prints the table. With --pick-by, the
    grid point with the best mean validation metric wins; --write-best FILE saves its config for `train --config`.
    """
    # the library is imported here, not at the top: see probmcl_med/cli/__init__.py
    from probmcl_med.sweep import grid_points, parse_grid, run_sweep

    points = grid_points(parse_grid(list(grid or [])))
    if write_best is not None and pick_by is None:
        pick_by = "mAP"
    sets = [*(overrides or []), *([f"dataset.root={root}"] if root is not None else [])]
    run_sweep(
        config,
        points,
        seeds,
        out,
        sets,
        console=Console(),
        plots=not no_plots,
        pick_by=pick_by,
        write_best=write_best,
        epochs=epochs,
    )


def register(app: typer.Typer) -> None:
    """Add ``sweep`` to the Typer app."""
    app.command("sweep", cls=Command, epilog=EPILOG)(sweep_command)
