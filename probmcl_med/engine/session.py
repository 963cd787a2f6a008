"""What every training mode shares: the run folder, the encoder and datasets, loaders, DDP, checkpoints and resume,
the handlers and the bundle.

A :class:`Session` reads only the keys every mode reads (``seed``, ``device``, ``workers``, ``amp``, ``compile``,
``log_every``, ``output_dir``, ``dataset``, ``encoder``, ``checkpoint``); each mode (:mod:`probmcl_med.engine.modes`)
reads its own.

Exact resume: each epoch's data order and each sample's augmentation seed come from ``(seed, epoch, position)``
alone (:class:`~probmcl_med.engine.data.ResumableSampler`); a training state holds the models, optimiser, scheduler,
GradScaler, epoch sums, engine counters, the position in the epoch and every RNG state, restored last
(:meth:`Session.resume_engine`), so a run resumed mid-epoch continues bit for bit.
"""

from __future__ import annotations

import json
import platform
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from probmcl_med.bundle import DatasetSource, cpu_state, save_model_bundle
from probmcl_med.config import RunConfig, save_config
from probmcl_med.config.schema import ContrastiveConfig
from probmcl_med.data.base import make_loader
from probmcl_med.data.datasets import build_dataset
from probmcl_med.data.mpp import input_mpp
from probmcl_med.data.normalization import resolve_normalization
from probmcl_med.data.stain import fit_reference
from probmcl_med.data.transforms import build_eval_transform, build_train_transform
from probmcl_med.engine.amp import AmpSettings, amp_settings
from probmcl_med.engine.checkpoint import CheckpointManager, capture_rng_state, check_compatible, restore_rng_state
from probmcl_med.engine.contrastive import mdn_from_config
from probmcl_med.engine.data import ResumableSampler, SeededItems
from probmcl_med.engine.distributed import DistContext
from probmcl_med.engine.handlers import Checkpointer, EpochStats, MetricsLog, OnStart, TensorBoardLog
from probmcl_med.engine.preflight import Component
from probmcl_med.engine.progress import ProgressHandler, summary_table
from probmcl_med.engine.steps import IterationLrSchedule
from probmcl_med.errors import CheckpointError, ConfigError, DataError
from probmcl_med.fileio import atomic_write_text
from probmcl_med.models.encoders import get_encoder
from probmcl_med.models.heads import LinearHead

STAGES = ("contrastive", "classifier")
"""Stage names by index, as in checkpoint names; the one-stage modes train (and log) the ``classifier`` stage."""


@dataclass
class Resume:
    """The training state a stage continues from."""

    state: dict[str, Any]
    path: Path

    @property
    def stage_index(self) -> int:
        return int(self.state["stage_index"])


class Session:
    """Builds the shared parts of a run from its config (see the module docstring)."""

    def __init__(self, config: RunConfig, ctx: DistContext, console: Console | None = None) -> None:
        self.config = config
        self.ctx = ctx
        self.console = console if ctx.is_main else None
        self.out = Path(config.output_dir)
        self.manager = CheckpointManager(self.out / "checkpoints", config.checkpoint.keep_last)
        self.amp: AmpSettings = amp_settings(ctx.device, config.amp)
        self.records: dict[str, list[dict[str, Any]]] = {}
        self.mdn: nn.Module | None = None
        self.best: dict[str, Any] = {}
        self.components: list[Component] = []  # checked before training (engine.preflight); recorded in run.json
        self.folder_plan: tuple[Resume | None, tuple[str, ...]] | None = None  # what start_writing writes

    # ----------------------------------------------------------------------------------------------------- set-up
    def log(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, highlight=False)

    def build_encoder(self) -> None:
        e = self.config.encoder
        self.encoder = get_encoder(e.name, pretrained=e.pretrained, weights=e.weights, **dict(e.options))
        self.encoder.to(self.ctx.device)
        self.encoder_fwd: nn.Module = self.encoder
        if self.config.compile:
            self.encoder_fwd = torch.compile(self.encoder)

    def build_data(self) -> None:
        d = self.config.dataset
        # skip_bad goes into the factory: files missing at build time are dropped and counted there, not fatal.
        self.train_ds = build_dataset(d.name, d.root, d.train_split, d.options, d.skip_bad)
        self.class_names = list(self.train_ds.class_names)
        self.val_ds = None
        try:
            self.val_ds = build_dataset(d.name, d.root, d.val_split, d.options, d.skip_bad)
        except DataError as exc:  # a dataset without a validation split: keep the last epoch instead of the best
            warnings.warn(
                f"no validation split ({exc}): no best epoch (the classifier keeps its last), no calibration and no "
                "tuned thresholds (both are fitted on it); hold some rows out with a split column's 'valid' rows or, "
                "without one, --set dataset.options.valid_fraction=0.1",
                RuntimeWarning,
                2,
            )
        if self.val_ds is not None and list(self.val_ds.class_names) != self.class_names:
            raise ConfigError(f"dataset {d.name}: the {d.val_split} split has other classes than {d.train_split}")
        mean, std = self.encoder.normalization
        self.normalization = resolve_normalization(d.normalization, mean, std, dataset=self.train_ds)
        # fitted once here; the same reference goes into model.pt for evaluate and predict
        self.stain = fit_reference(d.stain_normalize, method=d.stain_method).to_dict() if d.stain_normalize else None
        self.input_mpp = input_mpp(d.name, d.options, d.image_size, d.mpp)

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        n = self.normalization
        return (n.mean or (0.0, 0.0, 0.0), n.std or (1.0, 1.0, 1.0))

    def train_transform(self) -> Any:
        """The augmented training transform (``dataset.augment``) at the image size, normalised."""
        d = self.config.dataset
        return build_train_transform(d.image_size, *self.mean_std, **d.augment.model_dump(), stain=self.stain)

    def eval_transform(self) -> Any:
        """The deterministic transform (load, stain normalisation when configured, resize, normalise)."""
        return build_eval_transform(self.config.dataset.image_size, *self.mean_std, self.stain)

    def build_mdn(self, c: ContrastiveConfig) -> nn.Module:
        """The mixture density network of the ``contrastive`` section (z = h(x): it lives in the encoder's space)."""
        mdn = mdn_from_config(c, self.encoder.num_features, len(self.class_names))
        return mdn.to(self.ctx.device)  # mdn.spec holds the constructor arguments for checkpoints

    def write_run_files(self) -> None:
        if not self.ctx.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.out / "config.yaml")
        atomic_write_text(self.out / "class_names.json", json.dumps(self.class_names, indent=2) + "\n")
        e = self.config.encoder
        meta = {
            "encoder": {
                "name": e.name,
                "options": e.options,
                "num_features": int(self.encoder.num_features),
                "pretrained": e.pretrained,
                "weights": e.weights,
            },
            "normalization": self.normalization.to_dict(),
            "image_size": self.config.dataset.image_size,
            "dataset": {
                "name": self.config.dataset.name,
                "train_images": len(self.train_ds),
                "classes": len(self.class_names),
            },
            "components": [c.record() for c in self.components],
            "world_size": self.ctx.world_size,
            "device": str(self.ctx.device),
            "amp": self.amp.name,
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
        }
        atomic_write_text(self.out / "run.json", json.dumps(meta, indent=2) + "\n")

    def start_writing(self, engine: Any = None) -> None:
        """Write the run files and drop the metric lines of epochs to be redone: once, when a stage's engine starts.

        Until then nothing is written to the run folder (TensorBoard's writer opens then too), so every refusal (a
        folder holding a run, a checkpoint of other classes, another encoder or other epoch lengths, a batch that
        does not fit) leaves the folder byte for byte as it was. ``folder_plan`` is set by ``train`` once the resume
        point is known.
        """
        if self.folder_plan is None:
            return
        found, stages = self.folder_plan
        self.folder_plan = None
        self.write_run_files()
        self.truncate_metrics(found, stages)

    # ----------------------------------------------------------------------------------------------------- data
    def per_rank_batch(self, batch_size: int, dataset_len: int, key: str) -> int:
        """This rank's share of the global ``batch_size`` (``key`` names the config section it came from)."""
        if batch_size % self.ctx.world_size:
            raise ConfigError(
                f"{key}.batch_size={batch_size} does not divide over {self.ctx.world_size} processes; use a multiple"
            )
        per_rank = batch_size // self.ctx.world_size
        available = dataset_len // self.ctx.world_size
        if per_rank > available:
            if available < (2 if key == "contrastive" else 1):
                raise ConfigError(f"the training split has only {dataset_len} images, too few for {key} batches")
            warnings.warn(f"{key}.batch_size reduced to {available} per process (the dataset is small)", stacklevel=2)
            per_rank = available
        return per_rank

    def loader(
        self, dataset: Any, batch: int, *, shuffle: bool, drop_last: bool, workers: int, shard: bool = True
    ) -> tuple[Any, ResumableSampler]:
        """DataLoader over ``(index, seed)`` pairs of a :class:`ResumableSampler` (sharded over ranks if ``shard``)."""
        sampler = ResumableSampler(
            dataset,
            seed=self.config.seed,
            shuffle=shuffle,
            num_replicas=self.ctx.world_size if shard else 1,
            rank=self.ctx.rank if shard else 0,
            drop_last=drop_last,
        )
        loader = make_loader(
            SeededItems(dataset),
            batch,
            sampler=sampler,
            workers=workers,
            drop_last=drop_last,
            pin_memory=self.ctx.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.config.seed),  # never draws from the global RNG
        )
        return loader, sampler

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP on several processes (no SyncBatchNorm: a frozen or eval-mode BN needs none; CPU has none)."""
        if not self.ctx.distributed:
            return module
        device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    # ----------------------------------------------------------------------------------------------------- resume
    def find_resume(self, resume: bool, stages: tuple[str, ...]) -> Resume | None:
        existing = self.manager.list()
        first = STAGES.index(stages[0])
        if not resume:
            clash = [c for c in existing if c.stage_index >= first]
            if clash:
                raise CheckpointError(
                    f"{self.out} already holds checkpoints ({clash[-1].path.name}); pass --resume to continue that run, "
                    f"or use another --output-dir"
                )
            if first == 1 and existing:  # classifier only: start from the finished contrastive stage
                loaded = self.manager.load_latest()
                if loaded is not None:
                    return Resume(*loaded)
            return None
        loaded = self.manager.load_latest()
        if loaded is None:
            self.log(f"no checkpoint in {self.manager.folder}: starting from scratch")
            return None
        state, path = loaded
        check_compatible(state, self.class_names, self.config.encoder.name, path)
        self.log(f"resuming from {path}")
        return Resume(state, path)

    def restore_models(self, state: dict[str, Any], build_mdn: Callable[[], nn.Module] | None = None) -> None:
        """Encoder (and, when the state has one and ``build_mdn`` can make it, the MDN) weights from a state."""
        models = state["models"]
        self.encoder.load_state_dict(models["encoder"])
        if models.get("mdn") is not None and build_mdn is not None:
            if self.mdn is None:
                self.mdn = build_mdn()
            self.mdn.load_state_dict(models["mdn"])

    def truncate_metrics(self, resume: Resume | None, stages: tuple[str, ...]) -> None:
        """Drop metric lines of epochs that will be redone (resume) or of stages about to restart (fresh)."""
        if not self.ctx.is_main:
            return
        path = self.out / "metrics.jsonl"
        if resume is None or "models" not in resume.state:
            drop = set(stages)
            MetricsLog.truncate(path, lambda r: r.get("stage") not in drop)
            return
        index, done = resume.stage_index, int(resume.state["epoch"])

        def keep(r: dict[str, Any]) -> bool:
            i = STAGES.index(r["stage"]) if r.get("stage") in STAGES else -1
            return i < index or (i == index and int(r.get("epoch", 0)) <= done)

        if resume.state.get("complete") and STAGES[index] not in stages:
            keep = lambda r: True  # noqa: E731 - nothing of the finished stage is redone
        MetricsLog.truncate(path, keep)

    def resume_engine(
        self,
        engine: Any,
        sampler: ResumableSampler,
        per_rank: int,
        state: dict[str, Any],
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        stats: EpochStats,
    ) -> None:
        """Optimiser, scheduler, GradScaler, epoch sums, engine counters, data position, then the RNG states (last:
        nothing may draw random numbers between the restore and the first batch)."""
        if int(state["epoch_length"]) != int(engine.state.epoch_length):
            raise CheckpointError(
                f"the checkpoint's epochs have {state['epoch_length']} iterations but this run's have "
                f"{engine.state.epoch_length} (batch size, dataset or number of processes changed); resume with the same"
            )
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if self.amp.scaler is not None and state.get("scaler"):
            self.amp.scaler.load_state_dict(state["scaler"])
        stats.load_state_dict(state["epoch_stats"])
        engine.state.iteration = int(state["iteration"])
        engine.state.epoch = int(state["epoch"])
        sampler.skip_next(int(state["epoch_iteration"]) * per_rank)
        restore_rng_state(state["rng"])

    # ----------------------------------------------------------------------------------------------------- saving
    def training_state(
        self, stage_index: int, engine: Any, optimizer: Any, scheduler: Any, stats: EpochStats, **parts: Any
    ) -> dict[str, Any]:
        """The full training state after the engine's current iteration (``parts``: models, best, ...)."""
        it = int(engine.state.iteration)
        length = int(engine.state.epoch_length)
        return {
            "stage_index": stage_index,
            "stage": STAGES[stage_index],
            "iteration": it,
            "epoch": it // length,
            "epoch_iteration": it % length,
            "epoch_length": length,
            "max_epochs": int(engine.state.max_epochs),
            "complete": it >= length * int(engine.state.max_epochs),
            "class_names": self.class_names,
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

    def model_states(self, **modules: nn.Module) -> dict[str, Any]:
        """CPU copies of the encoder, the given modules and, when the run has one, the MDN (with its spec)."""
        models = {"encoder": cpu_state(self.encoder), **{name: cpu_state(m) for name, m in modules.items()}}
        if self.mdn is not None:
            models["mdn"] = cpu_state(self.mdn)
            models["mdn_spec"] = self.mdn.spec
        return models

    def handlers(
        self,
        stage_index: int,
        stats: EpochStats,
        scheduler: Any,
        optimizer: Any,
        parts: Callable[[], dict[str, Any]],
        extra: tuple[Any, ...] = (),
    ) -> list[Any]:
        """The stage's handlers in attach order: the run files (:meth:`start_writing`), LR schedule, epoch averages,
        ``extra`` (validation), progress, metrics.jsonl, TensorBoard (rank 0) and the checkpointer last."""
        stage = STAGES[stage_index]
        self.metrics_log = MetricsLog(self.out / "metrics.jsonl", stage, self.ctx)

        def save(engine: Any) -> None:
            state = self.training_state(stage_index, engine, optimizer, scheduler, stats, **parts())
            self.manager.save(
                state, stage_index=stage_index, stage=stage, epoch=state["epoch"], iteration=state["iteration"]
            )

        every = self.config.log_every

        def open_tensorboard(engine: Any) -> None:  # MONAI's handler opens its writer when built: build it now
            TensorBoardLog(self.out / "tensorboard" / stage, every).attach(engine)

        tensorboard = [OnStart(open_tensorboard)] if self.ctx.is_main else []
        return [
            OnStart(self.start_writing),  # first: the run files before any handler writes
            IterationLrSchedule(scheduler),
            stats,
            *extra,
            ProgressHandler(stage, self.console, every=every),
            self.metrics_log,
            *tensorboard,
            Checkpointer(save, self.config.checkpoint.every_n_iterations, self.ctx),
        ]

    def finish_stage(self, stage: str) -> None:
        """Keep the stage's epoch records and print its summary table."""
        self.records[stage] = self.metrics_log.records
        if self.console is not None and self.records[stage]:
            self.console.print(summary_table(stage, self.records[stage]))

    def write_bundle(
        self, head: nn.Linear, best: dict[str, Any], normalize_features: bool, feature_cache: bool = False
    ) -> Path:
        """RUN/model.pt with the best head (and fine-tuned encoder), atomically; rank 0 only. ``feature_cache``: the
        head trained on the frozen encoder's cached features (evaluate reads them back)."""
        encoder = self.encoder
        e = self.config.encoder
        if best.get("encoder") is not None:  # fine-tuned: the best epoch's encoder, not the current one
            encoder = get_encoder(e.name, require_weights=False, **dict(e.options))
            encoder.load_state_dict(best["encoder"])
        best_head = LinearHead(head.in_features, head.out_features)
        best_head.load_state_dict(best["head"])
        mean, std = self.mean_std
        config = self.config.to_dict()
        return save_model_bundle(
            self.out,
            encoder=encoder,
            head=best_head,
            mdn=self.mdn,
            class_names=self.class_names,
            mean=mean,
            std=std,
            image_size=self.config.dataset.image_size,
            encoder_name=e.name,
            encoder_options=dict(e.options),
            normalize_features=normalize_features,
            dataset=DatasetSource.from_config_dict(config),
            training_config=config,
            best_val_map=best.get("map"),
            best_epoch=best.get("epoch"),
            mpp=self.input_mpp,
            stain_reference=self.stain,
            feature_cache=feature_cache,
        )
