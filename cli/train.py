"""``probmcl-med train``: resolve a config (named config, file, ``--set`` overrides), then run the library's training.

Thin by design: parsing and printing here, everything else in :func:`probmcl_med.engine.run.train`.
Under ``torchrun --nproc_per_node=K -m probmcl_med.cli train ...`` the same command runs DDP on K processes.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from probmcl_med.cli.grammar import Command
from probmcl_med.config import RunConfig, find_named_config, load_config, with_epochs
from probmcl_med.errors import TrainingInterrupted

EPILOG = """\
Examples:

  probmcl-med train --dataset demo

  probmcl-med train --dataset csv --root ~/patches --epochs 8

  probmcl-med train --dataset demo --epochs 6 --resume --extend --output-dir runs/demo

  probmcl-med train --dataset adp --root /data/ADP --set contrastive.tau=0.1

  probmcl-med train --config my.yaml --stage classifier --resume --output-dir runs/exp1

  torchrun --nproc_per_node=4 -m probmcl_med.cli train --dataset coco --root /data/coco
"""


def resolve_train_config(
    dataset: str | None,
    config: Path | None,
    overrides: list[str] | None,
    output_dir: Path | None,
    epochs: int | None = None,
    root: str | None = None,
    stage: str = "all",
) -> RunConfig:
    """The run config from ``--config`` or ``configs/DATASET.yaml``, ``--dataset``, ``--set``, ``--root``,
    ``--output-dir`` and ``--epochs`` (the length of what the command trains, applied last:
    :func:`probmcl_med.config.with_epochs`). The options win over ``--set`` of the same key."""
    sets = list(overrides or [])
    path: Path | None = config
    if path is None and dataset is not None:
        path = find_named_config(dataset)  # None: defaults + dataset.name, e.g. a plugin dataset without a config
    if dataset is not None:
        sets.insert(0, f"dataset.name={dataset}")
    if root is not None:
        sets.append(f"dataset.root={root}")
    if output_dir is not None:
        sets.append(f"output_dir={output_dir}")
    resolved = load_config(path, overrides=sets)
    return resolved if epochs is None else with_epochs(resolved, epochs, stage)


def resume_command(argv: list[str] | None, cfg: RunConfig) -> str:
    """The command line that continues an interrupted run: the same arguments with ``--resume`` (or, when they are
    not known, the run folder's resolved config)."""
    if argv is None:
        return shlex.join(["probmcl-med", "train", "--config", f"{cfg.output_dir}/config.yaml", "--resume"])
    return shlex.join(["probmcl-med", *argv, *([] if "--resume" in argv else ["--resume"])])


def train_command(
    ctx: typer.Context,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Dataset name; also picks configs/NAME.yaml when it exists.")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML run config (overrides --dataset's).")] = None,
    root: Annotated[
        str | None, typer.Option("--root", help="The dataset folder (the same as --set dataset.root=PATH).")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set", metavar="KEY=VALUE", help="Override a config key, e.g. --set contrastive.tau=0.1 (repeatable)."
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            help="Passes over the training set of what this command trains, whatever the mode: two-stage divides it "
            "between its stages in the ratio contrastive.epochs : classifier.epochs (each at least 1; with --stage, "
            "that stage's); the other modes train all of it.",
        ),
    ] = None,
    stage: Annotated[
        str, typer.Option("--stage", help="Mode two-stage: contrastive, classifier or all (the default).")
    ] = "all",
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue from the newest checkpoint in the run folder, with the run's settings (a change to what "
            "shaped its training is refused).",
        ),
    ] = False,
    extend: Annotated[
        bool,
        typer.Option(
            "--extend",
            help="With --resume: continue the stage under another length (--epochs), where the resumed run then "
            "equals a fresh run of that length (lr_schedule constant; OneCycle and cosine are refused).",
        ),
    ] = False,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", help="Run folder (default: the config's).")] = None,
    print_config: Annotated[
        bool,
        typer.Option("--print-config", help="Print the resolved YAML config (the keys the mode reads) and exit."),
    ] = False,
) -> None:
    """Train as configured: mode asl (encoder + head end to end), two-stage (the paper: encoder + MDN with NLL +
    lambda * PCL, then a linear head on the frozen encoder), probe (that head alone, on the configured encoder) or
    joint (both objectives in one stage).

    The run folder gets config.yaml, class_names.json, run.json, metrics.jsonl, tensorboard/, checkpoints/ and
    model.pt (what `probmcl-med evaluate --checkpoint RUN` reads).
    """
    cfg = resolve_train_config(dataset, config, overrides, output_dir, epochs, root, stage)
    if print_config:
        sys.stdout.write(cfg.to_yaml())
        return
    # the library is imported here, not at the top: see probmcl_med/cli/__init__.py
    from probmcl_med.engine.run import train

    console = Console(stderr=True)
    try:
        result = train(cfg, stage=stage, resume=resume, extend=extend, console=console)
    except TrainingInterrupted as exc:
        argv = ctx.obj.get("argv") if isinstance(ctx.obj, dict) else None
        raise TrainingInterrupted(f"{exc}; continue with: {resume_command(argv, cfg)}", exc.checkpoint) from None
    out = Console()
    if result.model_path is not None:
        best = f" (best validation mAP {result.best_map:.2f} at epoch {result.best_epoch})" if result.best_map else ""
        out.print(f"model: {result.model_path}{best}", highlight=False)
        out.print(f"next: probmcl-med evaluate --checkpoint {result.output_dir} --split test", highlight=False)
    else:
        out.print(f"run folder: {result.output_dir}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``train`` to the Typer app."""
    app.command("train", cls=Command, epilog=EPILOG)(train_command)
