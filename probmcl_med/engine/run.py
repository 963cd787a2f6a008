"""A whole run from its typed config: the mode's stages, in order, in one locked run folder.

::

    from probmcl_med.config import load_config
    from probmcl_med.engine import train

    result = train(load_config("configs/demo.yaml"))       # stage 1 then stage 2
    result.model_path                                      # RUN/model.pt, for evaluate / predict

The run folder (``config.output_dir``)::

    config.yaml         the resolved config (the keys the mode reads)    class_names.json   the C class names
    run.json            encoder name/options, normalisation (mean, std, source), image size, world size, AMP, and
                        per configured component its name and source (a plugin file's path and SHA-256)
    metrics.jsonl       one JSON line per epoch per stage (loss terms by name, lr, images/s, validation mAP)
    tensorboard/STAGE/  TensorBoard event files, one folder per stage
    checkpoints/        rolling training states (crash-proof; ``--resume`` continues from the newest readable one)
    model.pt            the bundle evaluate/predict need (best validation mAP of the stage with the head)

The mode's stages come from :mod:`probmcl_med.engine.modes`; what they share from
:mod:`~probmcl_med.engine.inputs` (encoder, data) and :mod:`~probmcl_med.engine.session` (the run folder).
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
from probmcl_med.core.mdn import MixtureDensityNetwork
from probmcl_med.engine.amp import amp_settings
from probmcl_med.engine.checkpoint import CheckpointManager
from probmcl_med.engine.distributed import barrier, cleanup_distributed, setup_distributed
from probmcl_med.engine.inputs import RunInputs
from probmcl_med.engine.modes import selected, stages_of
from probmcl_med.engine.preflight import check_components, check_stage_needs
from probmcl_med.engine.resume import check_resume_config
from probmcl_med.engine.session import Resume, Session
from probmcl_med.engine.training import Carried, StageRun
from probmcl_med.errors import ConfigError, TrainingInterrupted
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


def restore(inputs: RunInputs, state: dict[str, Any], device: torch.device) -> Carried:
    """The encoder's weights and the MDN a training state holds (the stages before the one that continues)."""
    models = state["models"]
    inputs.encoder.load_state_dict(models["encoder"])
    mdn = None
    if models.get("mdn") is not None:
        mdn = MixtureDensityNetwork.from_spec(models["mdn_spec"], models["mdn"]).to(device)
    return Carried(mdn=mdn, best=state.get("best"))


def train(
    config: RunConfig,
    *,
    stage: str = "all",
    resume: bool = False,
    extend: bool = False,
    console: Console | None = None,
) -> RunResult:
    """Train the mode's stages as configured; DDP when started by ``torchrun`` with several processes.

    Args:
        config: the resolved run configuration (the model of its mode).
        stage: ``all``, or one stage of a mode that has several (two-stage: ``contrastive``, ``classifier``).
        resume: continue from the newest readable checkpoint in ``config.output_dir/checkpoints``.
        extend: with ``resume``, the stage being continued may have another length, where a run of that length
            would have taken the same steps so far (:func:`~probmcl_med.engine.schedule.continue_schedule`).
        console: where progress bars, epoch lines and summary tables go (None: silent).

    Every configured component is first run once on a tiny batch against its contract, and the encoder checked for
    what the stages need (:mod:`~probmcl_med.engine.preflight`). Nothing is written to the run folder before the
    request is known to be valid (the components, the folder's state, the classes, the encoder, the mode, each key a
    resume would change): a refused command leaves the folder byte for byte as it was. The main process holds the
    folder's lock for the whole run.

    Raises:
        ConfigError, DataError, CheckpointError: one-line user errors (bad option, data, checkpoint or resume).
        ContractError: a component (a plugin, usually) breaks its contract, or the encoder lacks what a stage needs.
        RunFolderBusy: another process trains, resumes or sweeps into the same folder.
        TrainingDiverged: a step's loss is not finite (the step and the term are named); no checkpoint of it.
        TrainingInterrupted: Ctrl-C; the message names the newest checkpoint.
    """
    stages = stages_of(config)
    first, last = selected(config, stages, stage)
    if extend and not resume:
        raise ConfigError("--extend continues a run with another length: add --resume")
    names = tuple(s.name for s in stages)
    ctx = setup_distributed(config.device)
    configure_threads(config.threads, config.workers)
    session = Session(config, ctx, console)
    deterministic = torch.are_deterministic_algorithms_enabled()  # put back after the run (a library call)
    try:
        with session:
            seed_everything(config.seed, config.deterministic)
            inputs = RunInputs.build(config, ctx.device)
            if ctx.is_main:  # one line per split naming its classes without a positive image
                inputs.warn_classes_without_positives()
            chosen = stages[first : last + 1]
            check_stage_needs(config, chosen, inputs.encoder)
            objective = any(s.trains_objective for s in chosen)
            components = check_components(config, inputs.encoder, inputs.train_ds, inputs.num_classes, objective)
            found = session.find_resume(resume, first, list(names), inputs.class_names)
            if found is not None:
                check_resume_config(config, found.state, stages, extend, str(found.path))
            amp = amp_settings(ctx.device, config.amp)
            session.prepare_loading(inputs)  # after every refusal
            session.plan_writing(inputs, components, amp.name, found, names[first : last + 1])
            carried = Carried() if found is None else restore(inputs, found.state, ctx.device)
            for index in range(first, last + 1):
                carried = _run_stage(stages[index], index, names, last, found, carried, inputs, session, ctx, amp,
                                     extend)  # fmt: skip
            barrier(ctx)
    except KeyboardInterrupt as exc:
        if isinstance(exc, TrainingInterrupted):
            raise
        raise interrupted(Path(config.output_dir)) from None
    finally:
        torch.use_deterministic_algorithms(deterministic)
        if ctx.distributed:
            cleanup_distributed()
    writes_model = stages[last].name != "contrastive"
    best = carried.best or {}
    return RunResult(
        session.out,
        session.out / "model.pt" if writes_model else None,
        session.records,
        best.get("map"),
        best.get("epoch"),
    )


def _run_stage(
    stage: Any,
    index: int,
    names: tuple[str, ...],
    last: int,
    found: Resume | None,
    carried: Carried,
    inputs: RunInputs,
    session: Session,
    ctx: Any,
    amp: Any,
    extend: bool,
) -> Carried:
    """Run one stage, or nothing when the checkpoint shows it done (at the length asked)."""
    own = found if found is not None and found.stage_index == index else None
    if found is not None and found.stage_index > index:
        return carried  # done earlier; its weights were restored from the checkpoint
    if own is not None and own.complete and int(own.state["max_epochs"]) == stage.epochs:
        if index == last:
            session.log(f"{session.out}: the {stage.name} stage had finished; nothing left to run")
        return carried
    run = StageRun(inputs, session, ctx, amp, index, names, own, extend)
    return stage.run(run, carried)


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
