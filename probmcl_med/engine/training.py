"""One stage on MONAI's ``SupervisedTrainer``: its loader, its handlers, its checkpoints, and its exact resume.

A stage (:mod:`probmcl_med.engine.contrastive`, :mod:`~probmcl_med.engine.classifier`,
:mod:`~probmcl_med.engine.joint`) builds its model, loss, step, transform and loader and hands them to
:meth:`StageRun.train`, which runs them with the handlers every stage shares (:meth:`StageRun.handlers`).

Conventions: ``batch_size`` is the GLOBAL number of images per step (each of ``K`` DDP ranks takes ``batch_size /
K``); stages on two views drop the last incomplete batch of an epoch (equal batches on every rank, so the distributed
loss is exactly the single-process one); Adam, and the schedule of :mod:`probmcl_med.engine.schedule` stepped per
iteration; images/s counts images, not views.

Exact resume: each epoch's data order and each sample's augmentation seed come from ``(seed, epoch, position)``
alone (:class:`~probmcl_med.engine.data.ResumableSampler`); a training state holds the models, optimiser, scheduler,
GradScaler, epoch sums, engine counters, the position in the epoch and every RNG state, restored last
(:meth:`StageRun.resume_engine`), so a run resumed mid-epoch continues bit for bit.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from probmcl_med.bundle import cpu_state
from probmcl_med.data.base import make_loader
from probmcl_med.engine.amp import AmpSettings
from probmcl_med.engine.checkpoint import capture_rng_state, restore_rng_state
from probmcl_med.engine.data import ResumableSampler, SeededItems
from probmcl_med.engine.distributed import DistContext
from probmcl_med.engine.handlers import Checkpointer, EpochStats, MetricsLog, OnStart, TensorBoardLog
from probmcl_med.engine.inputs import RunInputs
from probmcl_med.engine.progress import ProgressHandler, summary_table
from probmcl_med.engine.schedule import continue_schedule, lr_scheduler
from probmcl_med.engine.session import Resume, Session
from probmcl_med.engine.steps import IterationLrSchedule, TrainStep, make_trainer
from probmcl_med.errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class StageRun:
    """What a stage is handed to run: the run's inputs and folder, this process's place, and where it resumes.

    Attributes:
        inputs: the encoder and the data (:class:`~probmcl_med.engine.inputs.RunInputs`).
        session: the run folder (:class:`~probmcl_med.engine.session.Session`).
        ctx: rank, world size, device.
        amp: autocast dtype and GradScaler.
        index: the stage's position in its mode.
        names: the mode's stage names, by position.
        resume: the stage's own training state to continue from, or None (a fresh stage).
        extend: ``--extend``: the stage may continue under a schedule of another length (where exact).
    """

    inputs: RunInputs
    session: Session
    ctx: DistContext
    amp: AmpSettings
    index: int
    names: tuple[str, ...]
    resume: Resume | None = None
    extend: bool = False

    @property
    def config(self) -> Any:
        return self.inputs.config

    @property
    def name(self) -> str:
        return self.names[self.index]

    @property
    def workers(self) -> int:
        """The training loader's worker processes, chosen from the data (:meth:`Session.prepare_loading`)."""
        return int(self.session.loading["workers"])

    # ------------------------------------------------------------------------------------------------------ data
    def per_rank_batch(self, batch_size: int, dataset_len: int, key: str, minimum: int = 1) -> int:
        """This rank's share of the global ``batch_size`` (``key`` names the config section it came from).

        Raises:
            ConfigError: a batch that does not divide over the processes, or a split too small for ``minimum``.
        """
        world = self.ctx.world_size
        if batch_size % world:
            raise ConfigError(f"{key}.batch_size={batch_size} does not divide over {world} processes; use a multiple")
        per_rank, available = batch_size // world, dataset_len // world
        if per_rank > available:
            if available < minimum:
                raise ConfigError(f"the training split has only {dataset_len} images, too few for {key} batches")
            warnings.warn(f"{key}.batch_size reduced to {available} per process (the dataset is small)", stacklevel=2)
            per_rank = available
        return per_rank

    def loader(
        self, dataset: Any, batch: int, *, shuffle: bool, drop_last: bool, workers: int
    ) -> tuple[Any, ResumableSampler]:
        """A training DataLoader over ``(index, seed)`` pairs of a :class:`ResumableSampler` sharded over ranks."""
        sampler = ResumableSampler(
            dataset,
            seed=self.config.seed,
            shuffle=shuffle,
            num_replicas=self.ctx.world_size,
            rank=self.ctx.rank,
            drop_last=drop_last,
        )
        loader = make_loader(
            SeededItems(dataset),
            batch,
            sampler=sampler,
            workers=workers,
            drop_last=drop_last,
            device=self.ctx.device,
            generator=torch.Generator().manual_seed(self.config.seed),  # never draws from the global RNG
        )
        return loader, sampler

    def batches(self, dataset: Any, batch: int, workers: int = 0) -> Any:
        """A plain, ordered DataLoader in this process (validation, the feature cache)."""
        return make_loader(dataset, batch, workers=workers, device=self.ctx.device)

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP on several processes (no SyncBatchNorm: a frozen or eval-mode BN needs none; CPU has none)."""
        if not self.ctx.distributed:
            return module
        device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    # ------------------------------------------------------------------------------------------------- training
    def train(
        self,
        step: TrainStep,
        *,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Any,
        loader: Any,
        sampler: ResumableSampler,
        per_rank: int,
        epochs: int,
        models: Callable[[], dict[str, Any]],
        extra: tuple[Any, ...] = (),
        best: Callable[[], dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Run ``step`` for ``epochs`` passes on a stock SupervisedTrainer with the shared handlers; resume first when
        the stage has a state. Returns the stage's epoch records (what ``metrics.jsonl`` got).

        Args:
            models: the modules' CPU states for a checkpoint (:func:`model_states`).
            extra: handlers attached after the epoch averages (validation, best model).
            best: the best-model record for a checkpoint (validation's), or None.
        """
        max_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        scheduler = lr_scheduler(self.config.lr_schedule, optimizer, max_lrs, epochs * len(loader))
        stats = EpochStats(self.ctx)
        log = MetricsLog(self.session.out / "metrics.jsonl", self.name, self.ctx)

        def parts() -> dict[str, Any]:
            return {"models": models(), **({"best": best()} if best is not None else {})}

        trainer = make_trainer(
            step,
            device=self.ctx.device,
            max_epochs=epochs,
            loader=loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            handlers=self.handlers(stats, scheduler, optimizer, parts, log, extra),
        )
        if self.resume is not None:
            self.resume_engine(trainer, sampler, per_rank, optimizer, scheduler, stats, max_lrs)
        trainer.run()
        self.session.finish_stage(self.name, log.records)
        if self.session.console is not None and log.records:
            self.session.console.print(summary_table(self.name, log.records))
        return log.records

    def handlers(
        self,
        stats: EpochStats,
        scheduler: Any,
        optimizer: Any,
        parts: Callable[[], dict[str, Any]],
        log: MetricsLog,
        extra: tuple[Any, ...],
    ) -> list[Any]:
        """The stage's handlers in attach order: the run files (:meth:`Session.start_writing`), LR schedule, epoch
        averages, ``extra`` (validation), progress, metrics.jsonl, TensorBoard (rank 0) and the checkpointer last."""
        every = self.config.log_every

        def save(engine: Any) -> None:
            state = self.training_state(engine, optimizer, scheduler, stats, **parts())
            self.session.manager.save(
                state, stage_index=self.index, stage=self.name, epoch=state["epoch"], iteration=state["iteration"]
            )

        def open_tensorboard(engine: Any) -> None:  # MONAI's handler opens its writer when built: build it now
            TensorBoardLog(self.session.out / "tensorboard" / self.name, every).attach(engine)

        tensorboard = [OnStart(open_tensorboard)] if self.ctx.is_main else []
        return [
            OnStart(self.session.start_writing),  # first: the run files before any handler writes
            IterationLrSchedule(scheduler),
            stats,
            *extra,
            ProgressHandler(self.name, self.session.console, every=every),
            log,
            *tensorboard,
            Checkpointer(save, self.config.checkpoint.every_n_iterations, self.ctx),
        ]

    # ---------------------------------------------------------------------------------------- checkpoint, resume
    def training_state(
        self, engine: Any, optimizer: Any, scheduler: Any, stats: EpochStats, **parts: Any
    ) -> dict[str, Any]:
        """The full training state after the engine's current iteration (``parts``: models, best, ...)."""
        it, length = int(engine.state.iteration), int(engine.state.epoch_length)
        return {
            "stage_index": self.index,
            "stage": self.name,
            "stages": list(self.names),
            "iteration": it,
            "epoch": it // length,
            "epoch_iteration": it % length,
            "epoch_length": length,
            "max_epochs": int(engine.state.max_epochs),
            "complete": it >= length * int(engine.state.max_epochs),
            "class_names": self.inputs.class_names,
            "encoder_name": self.config.encoder.name,
            "config": self.config.to_dict(),
            "rng": capture_rng_state(),
            "sampler": {"seed": self.config.seed},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": self.amp.scaler.state_dict() if self.amp.scaler is not None else None,
            "epoch_stats": stats.state_dict(),
            **parts,
        }

    def resume_engine(
        self,
        engine: Any,
        sampler: ResumableSampler,
        per_rank: int,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        stats: EpochStats,
        max_lrs: list[float],
    ) -> None:
        """Optimiser, scheduler (continued under a new length with ``--extend``), GradScaler, epoch sums, engine
        counters, data position, then the RNG states (last: nothing may draw random numbers between the restore and
        the first batch)."""
        assert self.resume is not None
        state = self.resume.state
        length = int(engine.state.epoch_length)
        if int(state["epoch_length"]) != length:
            raise CheckpointError(
                f"the checkpoint's epochs have {state['epoch_length']} iterations but this run's have {length} "
                "(batch size, dataset or number of processes changed); resume with the same"
            )
        optimizer.load_state_dict(state["optimizer"])
        old_epochs, epochs = int(state["max_epochs"]), int(engine.state.max_epochs)
        if old_epochs == epochs:
            scheduler.load_state_dict(state["scheduler"])
        else:
            what = f"the {self.name} stage ({old_epochs} -> {epochs} epochs)"
            done = int(state["scheduler"]["last_epoch"])
            kind = self.config.lr_schedule
            continue_schedule(kind, scheduler, max_lrs, done, epochs * length, old_epochs * length, what)
        if self.amp.scaler is not None and state.get("scaler"):
            self.amp.scaler.load_state_dict(state["scaler"])
        stats.load_state_dict(state["epoch_stats"])
        engine.state.iteration = int(state["iteration"])
        engine.state.epoch = int(state["epoch"])
        sampler.skip_next(int(state["epoch_iteration"]) * per_rank)
        restore_rng_state(state["rng"])


@dataclass(frozen=True)
class Carried:
    """What a stage hands on to the next besides the encoder it trained in place: the MDN it trained (kept in the
    bundle for ``predict --uncertainty``), or None."""

    mdn: nn.Module | None = None
    best: dict[str, Any] | None = None
    """The best-model record (validation mAP and epoch) of a stage that writes ``model.pt``."""


def model_states(**modules: nn.Module | None) -> dict[str, Any]:
    """CPU copies of the given modules' weights for a checkpoint; an MDN also keeps its constructor spec."""
    out: dict[str, Any] = {}
    for name, module in modules.items():
        if module is None:
            continue
        out[name] = cpu_state(module)
        if name == "mdn":
            out["mdn_spec"] = dict(module.spec)
    return out
