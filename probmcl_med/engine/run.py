"""A whole ProbMCL run from a :class:`~probmcl_med.config.RunConfig`: the run folder, the shared set-up, the mode.

::

    from probmcl_med.config import load_config
    from probmcl_med.engine import train

    result = train(load_config("configs/demo.yaml"))       # stage 1 then stage 2
    result.model_path                                      # RUN/model.pt, for evaluate / predict

The run folder (``config.output_dir``)::

    config.yaml         the resolved config (the keys the mode reads)    class_names.json   the C class names
    run.json            encoder name/options, normalisation (mean, std, source), image size, world size, AMP, and
                        per configured component its name and source (a plugin file's path and SHA-256)
    metrics.jsonl       one JSON line per epoch per stage (loss terms, lr, images/s, validation mAP)
    tensorboard/STAGE/  TensorBoard event files, one folder per stage
    checkpoints/        rolling training states (crash-proof; ``--resume`` continues from the newest readable one)
    model.pt            the bundle evaluate/predict need (best validation mAP of the classifier stage), with the
                        training features' statistics for the out-of-distribution flag (fitted at the end)

The mode (:mod:`probmcl_med.engine.modes`) decides what is trained and for how long; the stages it runs are in
:mod:`probmcl_med.engine.stages`, the services they share in :mod:`probmcl_med.engine.session`.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from probmcl_med.config import RunConfig
from probmcl_med.engine.checkpoint import CheckpointManager
from probmcl_med.engine.distributed import barrier, cleanup_distributed, setup_distributed
from probmcl_med.engine.modes import MODES, stages_for
from probmcl_med.engine.preflight import check_components
from probmcl_med.engine.session import Session
from probmcl_med.errors import TrainingInterrupted, UserError, one_line_message
from probmcl_med.inference.ood import fit_model_ood
from probmcl_med.runlock import RunLock
from probmcl_med.threads import configure_threads


@dataclass
class RunResult:
    """What a run produced."""

    output_dir: Path
    model_path: Path | None
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    best_map: float | None = None
    best_epoch: int | None = None


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; with ``deterministic`` also force deterministic kernels (bitwise CPU runs)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def train(config: RunConfig, *, stage: str = "all", resume: bool = False, console: Console | None = None) -> RunResult:
    """Run ProbMCL training as configured; DDP when started by ``torchrun`` with several processes.

    Args:
        config: the resolved run configuration.
        stage: ``contrastive``, ``classifier`` or ``all`` (mode two-stage; the one-stage modes take only ``all``).
        resume: continue from the newest readable checkpoint in ``config.output_dir/checkpoints``.
        console: where progress bars, epoch lines and summary tables go (None: silent).

    Every configured component is first run once on a tiny batch against its contract
    (:func:`~probmcl_med.engine.preflight.check_components`). Nothing is written to the run folder before the request
    is known to be valid (the components, the folder's state, the classes, the encoder, the resume point;
    :meth:`Session.start_writing`): a refused command leaves the folder byte for byte as it was. The main process
    holds the folder's :class:`~probmcl_med.runlock.RunLock` for the whole run.

    Raises:
        ConfigError, DataError, CheckpointError: one-line user errors (bad option, data, or checkpoint).
        ContractError: a component (a plugin, usually) breaks its contract; nothing was written.
        RunFolderBusy: another process trains, resumes or sweeps into the same folder.
        TrainingDiverged: a step's loss is not finite (the step and the term are named); no checkpoint of it.
        TrainingInterrupted: Ctrl-C; the message names the newest checkpoint.
    """
    stages = stages_for(config.mode, stage)
    mode = MODES[config.mode](config)
    ctx = setup_distributed(config.device)
    configure_threads(config.threads, config.workers)
    lock = RunLock(config.output_dir, "train") if ctx.is_main else None
    try:
        if lock is not None:
            lock.acquire()
        session = Session(config, ctx, console)
        seed_everything(config.seed, config.deterministic)
        session.build_encoder()
        session.build_data()
        session.components = check_components(
            config, session.encoder, session.train_ds, len(session.class_names), stages
        )
        found = session.find_resume(resume, stages)  # every refusal before the first write
        session.folder_plan = (found, stages)
        model_path = mode.run(session, stages, found)
        if model_path is not None and ctx.is_main:
            session.log(ood_statistics(model_path, ctx.device, config.workers))
        barrier(ctx)
        best = session.best
        return RunResult(session.out, model_path, session.records, best.get("map"), best.get("epoch"))
    except KeyboardInterrupt as exc:
        if isinstance(exc, TrainingInterrupted):
            raise
        raise interrupted(Path(config.output_dir)) from None
    finally:
        if lock is not None:
            lock.release()
        if ctx.distributed:
            cleanup_distributed()


def ood_statistics(model_path: Path, device: torch.device, workers: int) -> str:
    """Fit the out-of-distribution statistics into ``model_path`` (:func:`~probmcl_med.inference.ood.fit_model_ood`);
    the line to log. A failure does not undo the training: the model then predicts without the flag, and says so."""
    try:
        stats = fit_model_ood(model_path, device=device, workers=workers)
    except UserError as exc:
        return f"out-of-distribution statistics not fitted ({one_line_message(exc)}): predict will say it cannot flag"
    return (
        f"out-of-distribution statistics: {stats.train_images} training images, flag threshold calibrated on "
        f"{stats.calibration_images} images of the {stats.calibrated_on} split"
    )


def interrupted(out: Path) -> TrainingInterrupted:
    """What a Ctrl-C left: the newest checkpoint in ``out/checkpoints`` (a ``--resume`` continues from it)."""
    saved = CheckpointManager(out / "checkpoints").list()
    if not saved:
        return TrainingInterrupted(f"interrupted: no checkpoint in {out} yet, a --resume starts from the beginning")
    last = saved[-1]
    return TrainingInterrupted(
        f"interrupted: last checkpoint {last.path} ({last.stage} stage, {last.epoch} epoch(s) done, "
        f"iteration {last.iteration})",
        checkpoint=str(last.path),
    )
