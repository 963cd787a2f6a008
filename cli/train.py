"""``probmcl-med train``: resolve a config (named config, file, ``--set`` overrides), then run the library's training.

Thin by design: parsing and printing here, everything else in :func:`probmcl_med.engine.run.train`.
Under ``torchrun --nproc_per_node=K -m probmcl_med.cli train ...`` the same command runs DDP on K processes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from probmcl_med.config import RunConfig, find_named_config, load_config
from probmcl_med.errors import ConfigError

EPILOG = """\
Examples:

  probmcl-med train --dataset demo

  probmcl-med train --dataset adp --set dataset.root=/data/ADP --set contrastive.tau=0.1

  probmcl-med train --config my.yaml --stage classifier --resume --output-dir runs/exp1

  torchrun --nproc_per_node=4 -m probmcl_med.cli train --dataset coco --set dataset.root=/data/coco
"""


def resolve_train_config(
    dataset: str | None, config: Path | None, overrides: list[str] | None, output_dir: Path | None
) -> RunConfig:
    """The run config from ``--config`` or ``configs/DATASET.yaml``, ``--dataset``, ``--set`` and ``--output-dir``."""
    sets = list(overrides or [])
    path: Path | None = config
    if path is None and dataset is not None:
        path = find_named_config(dataset)  # None: defaults + dataset.name, e.g. a plugin dataset without a config
    if dataset is not None:
        sets.insert(0, f"dataset.name={dataset}")
    if output_dir is not None:
        sets.append(f"output_dir={output_dir}")
    return load_config(path, overrides=sets)


def train_command(
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Dataset name; also picks configs/NAME.yaml when it exists.")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML run config (overrides --dataset's).")] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key, e.g. --set contrastive.tau=0.1 (repeatable)."),
    ] = None,
    stage: Annotated[str, typer.Option("--stage", help="contrastive, classifier or all.")] = "all",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest checkpoint in the run folder.")
    ] = False,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", help="Run folder (default: the config's).")] = None,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="Print the resolved YAML config and exit.")
    ] = False,
) -> None:
    """Train ProbMCL: stage 1 (encoder + MDN, NLL + lambda * PCL), then stage 2 (frozen encoder, linear head, ASL).

    The run folder gets config.yaml, class_names.json, run.json, metrics.jsonl, tensorboard/, checkpoints/ and
    model.pt (what `probmcl-med evaluate --checkpoint RUN` reads).
    """
    if stage not in ("contrastive", "classifier", "all"):
        raise ConfigError(f"--stage {stage!r}: use contrastive, classifier or all")
    cfg = resolve_train_config(dataset, config, overrides, output_dir)
    if print_config:
        sys.stdout.write(cfg.to_yaml())
        return
    from probmcl_med.engine.run import train

    console = Console(stderr=True)
    result = train(cfg, stage=stage, resume=resume, console=console)
    out = Console()
    if result.model_path is not None:
        best = f" (best validation mAP {result.best_map:.2f} at epoch {result.best_epoch})" if result.best_map else ""
        out.print(f"model: {result.model_path}{best}", highlight=False)
        out.print(f"next: probmcl-med evaluate --checkpoint {result.output_dir} --split test", highlight=False)
    else:
        out.print(f"run folder: {result.output_dir}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``train`` to the Typer app."""
    app.command("train", epilog=EPILOG)(train_command)
