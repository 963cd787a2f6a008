"""A whole ProbMCL run from a :class:`~probmcl_med.config.RunConfig`: data, encoder, both stages, the run folder.

::

    from probmcl_med.config import load_config
    from probmcl_med.engine import train

    result = train(load_config("configs/demo.yaml"))       # stage 1 then stage 2
    result.model_path                                      # RUN/model.pt, for evaluate / predict

The run folder (``config.output_dir``)::

    config.yaml         the resolved config          class_names.json   the C class names, in logit order
    run.json            encoder name/options, normalisation (mean, std, source), image size, world size, AMP
    metrics.jsonl       one JSON line per epoch per stage (loss terms, lr, images/s, validation mAP)
    tensorboard/        TensorBoard event files
    checkpoints/        rolling training states (crash-proof; ``--resume`` continues from the newest readable one)
    model.pt            the bundle evaluate/predict need (best validation mAP of the classifier stage)

Conventions: ``batch_size`` is the GLOBAL number of images per step (each of ``K`` DDP ranks takes
``batch_size / K``); stage 1 drops the last incomplete batch of an epoch (equal batches on every rank, so the
distributed loss is exactly the single-process one); both stages use Adam and OneCycleLR stepped per iteration
(``pct_start=0.2`` as in the ASL training script); images/s counts images, not views (a stage-1 image is two views).
"""

from __future__ import annotations

import json
import os
import platform
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from probmcl_med.bundle import DatasetSource, cpu_state, save_model_bundle
from probmcl_med.config import RunConfig, save_config
from probmcl_med.engine.amp import AmpSettings, amp_settings
from probmcl_med.engine.checkpoint import CheckpointManager, capture_rng_state, check_compatible, restore_rng_state
from probmcl_med.engine.data import ResumableSampler, SeededItems
from probmcl_med.engine.distributed import DistContext, barrier, cleanup_distributed, setup_distributed
from probmcl_med.engine.handlers import Checkpointer, EpochStats, MetricsLog, TensorBoardLog
from probmcl_med.engine.progress import ProgressHandler, summary_table
from probmcl_med.errors import CheckpointError, ConfigError
from probmcl_med.fileio import atomic_write_text
from probmcl_med.inference.features import compute_features
from probmcl_med.inference.loop import predict_batches

STAGES = ("contrastive", "classifier")
ONE_CYCLE_PCT_START = 0.2


@dataclass
class RunResult:
    """What a run produced."""

    output_dir: Path
    model_path: Path | None
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    best_map: float | None = None
    best_epoch: int | None = None


@dataclass
class _Resume:
    """The training state a stage continues from."""

    state: dict[str, Any]
    path: Path

    @property
    def stage_index(self) -> int:
        return int(self.state["stage_index"])


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; with ``deterministic`` also force deterministic kernels (bitwise CPU runs)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def stages_to_run(stage: str) -> tuple[str, ...]:
    """``all`` -> both; else the one named (one-line ConfigError on a typo)."""
    if stage == "all":
        return STAGES
    if stage not in STAGES:
        raise ConfigError(f"--stage {stage!r}: use contrastive, classifier or all")
    return (stage,)


def one_cycle(optimizer: torch.optim.Optimizer, max_lrs: list[float], total_steps: int) -> Any:
    """OneCycleLR stepped per iteration over the whole stage."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lrs, total_steps=max(1, total_steps), pct_start=ONE_CYCLE_PCT_START
    )


class Run:
    """Builds everything from a config and runs the stages (use :func:`train`)."""

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

    # ----------------------------------------------------------------------------------------------------- set-up
    def log(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, highlight=False)

    def build_data(self) -> None:
        from probmcl_med.data.datasets import build_dataset
        from probmcl_med.data.normalization import resolve_normalization

        d = self.config.dataset
        # skip_bad goes into the factory: files missing at build time are dropped and counted there, not fatal.
        self.train_ds = build_dataset(d.name, d.root, d.train_split, d.options, d.skip_bad)
        self.class_names = list(self.train_ds.class_names)
        self.val_ds = None
        try:
            self.val_ds = build_dataset(d.name, d.root, d.val_split, d.options, d.skip_bad)
        except Exception as exc:  # a dataset without a validation split: keep the last epoch instead of the best
            from probmcl_med.errors import DataError

            if not isinstance(exc, DataError):
                raise
            warnings.warn(f"no validation split ({exc}); the classifier keeps its last epoch", RuntimeWarning, 2)
        if self.val_ds is not None and list(self.val_ds.class_names) != self.class_names:
            raise ConfigError(f"dataset {d.name}: the {d.val_split} split has other classes than {d.train_split}")
        mean, std = self.encoder.normalization
        self.normalization = resolve_normalization(d.normalization, mean, std, dataset=self.train_ds)

    def build_encoder(self) -> None:
        from probmcl_med.models.encoders import get_encoder

        e = self.config.encoder
        self.encoder = get_encoder(e.name, pretrained=e.pretrained, weights=e.weights, **dict(e.options))
        self.encoder.to(self.ctx.device)
        self.encoder_fwd: nn.Module = self.encoder
        if self.config.compile:
            self.encoder_fwd = torch.compile(self.encoder)

    def build_mdn(self) -> nn.Module:
        from probmcl_med.core.mdn import MixtureDensityNetwork

        c = self.config.contrastive
        hidden = tuple(int(h) for h in c.mdn_hidden)
        # z = h(x) (docs/math.md s.3): the mixture lives in the encoder's feature space, n = H
        mdn = MixtureDensityNetwork(
            self.encoder.num_features,
            len(self.class_names),
            hidden=hidden,
            input_norm="batch" if c.mdn_input == "standardized" else "none",
        )
        if c.mdn_input_gain != 1.0:  # unit-norm h: scale the first layer's initial weights (see the config field)
            first = next(m for m in mdn.modules() if isinstance(m, nn.Linear))
            with torch.no_grad():
                first.weight.mul_(c.mdn_input_gain)
        return mdn.to(self.ctx.device)  # mdn.spec holds the constructor arguments for checkpoints

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        n = self.normalization
        return (n.mean or (0.0, 0.0, 0.0), n.std or (1.0, 1.0, 1.0))

    def write_run_files(self) -> None:
        if not self.ctx.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.out / "config.yaml")
        atomic_write_text(self.out / "class_names.json", json.dumps(self.class_names, indent=2) + "\n")
        meta = {
            "encoder": {
                "name": self.config.encoder.name,
                "options": self.config.encoder.options,
                "num_features": int(self.encoder.num_features),
                "pretrained": self.config.encoder.pretrained,
                "weights": self.config.encoder.weights,
            },
            "normalization": self.normalization.to_dict(),
            "image_size": self.config.dataset.image_size,
            "dataset": {
                "name": self.config.dataset.name,
                "train_images": len(self.train_ds),
                "classes": len(self.class_names),
            },
            "world_size": self.ctx.world_size,
            "device": str(self.ctx.device),
            "amp": self.amp.name,
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
        }
        atomic_write_text(self.out / "run.json", json.dumps(meta, indent=2) + "\n")

    def per_rank_batch(self, batch_size: int, dataset_len: int, stage: str) -> int:
        if batch_size % self.ctx.world_size:
            raise ConfigError(
                f"{stage}.batch_size={batch_size} does not divide over {self.ctx.world_size} processes; use a multiple"
            )
        per_rank = batch_size // self.ctx.world_size
        available = dataset_len // self.ctx.world_size
        if per_rank > available:
            if available < (2 if stage == "contrastive" else 1):
                raise ConfigError(f"the training split has only {dataset_len} images, too few for {stage} batches")
            warnings.warn(f"{stage}.batch_size reduced to {available} per process (the dataset is small)", stacklevel=2)
            per_rank = available
        return per_rank

    def loader(
        self, dataset: Any, batch: int, *, shuffle: bool, drop_last: bool, workers: int, shard: bool = True
    ) -> tuple[Any, Any]:
        """DataLoader over ``(index, seed)`` pairs of a :class:`ResumableSampler` (sharded over ranks if ``shard``)."""
        from probmcl_med.data.base import make_loader

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
    def find_resume(self, resume: bool, stages: tuple[str, ...]) -> _Resume | None:
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
                    return _Resume(*loaded)
            return None
        loaded = self.manager.load_latest()
        if loaded is None:
            self.log(f"no checkpoint in {self.manager.folder}: starting from scratch")
            return None
        state, path = loaded
        check_compatible(state, self.class_names, self.config.encoder.name, path)
        self.log(f"resuming from {path}")
        return _Resume(state, path)

    def restore_models(self, state: dict[str, Any]) -> None:
        models = state["models"]
        self.encoder.load_state_dict(models["encoder"])
        if models.get("mdn") is not None:
            if self.mdn is None:
                self.mdn = self.build_mdn()
            self.mdn.load_state_dict(models["mdn"])

    def base_state(self, stage_index: int, engine: Any, **parts: Any) -> dict[str, Any]:
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
            **parts,
        }

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

    def checkpoint_save(self, stage_index: int, make_state: Any) -> Any:
        def save(engine: Any) -> None:
            state = self.base_state(stage_index, engine, **make_state())
            self.manager.save(
                state,
                stage_index=stage_index,
                stage=STAGES[stage_index],
                epoch=state["epoch"],
                iteration=state["iteration"],
            )

        return save

    def handlers(self, stage: str, stats: EpochStats, extra: list[Any], save: Any) -> list[Any]:
        metrics = MetricsLog(self.out / "metrics.jsonl", self.ctx)
        self._metrics = metrics
        tensorboard = TensorBoardLog(self.out / "tensorboard", stage, self.config.log_every, self.ctx)
        progress = ProgressHandler(stage, self.console, every=self.config.log_every)
        checkpointer = Checkpointer(save, self.config.checkpoint.every_n_iterations, self.ctx)
        return [stats, *extra, progress, metrics, tensorboard, checkpointer]

    def truncate_metrics(self, resume: _Resume | None, stages: tuple[str, ...]) -> None:
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

    # ----------------------------------------------------------------------------------------------------- stage 1
    def run_contrastive(self, resume: _Resume | None) -> None:
        from probmcl_med.data.transforms import TwoViews, build_train_transform
        from probmcl_med.engine.contrastive import ContrastiveModel, ContrastiveTrainer, build_objective

        c, d = self.config.contrastive, self.config.dataset
        mean, std = self.mean_std
        self.train_ds.transform = TwoViews(build_train_transform(d.image_size, mean, std, **d.augment.model_dump()))
        per_rank = self.per_rank_batch(c.batch_size, len(self.train_ds), "contrastive")
        loader, sampler = self.loader(
            self.train_ds, per_rank, shuffle=True, drop_last=True, workers=self.config.workers
        )
        self.mdn = self.build_mdn()
        model = ContrastiveModel(self.encoder_fwd, self.mdn)
        network = self.wrap(model)
        params = [*self.encoder.parameters(), *self.mdn.parameters()]
        optimizer = torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        scheduler = one_cycle(optimizer, [c.lr], c.epochs * len(loader))
        stats = EpochStats(self.ctx, "contrastive")

        def parts() -> dict[str, Any]:
            return {
                "models": {"encoder": cpu_state(self.encoder), "mdn": cpu_state(self.mdn), "mdn_spec": self.mdn.spec},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": self.amp.scaler.state_dict() if self.amp.scaler is not None else None,
                "epoch_stats": stats.state_dict(),
            }

        trainer = ContrastiveTrainer(
            device=self.ctx.device,
            max_epochs=c.epochs,
            train_data_loader=loader,
            network=network,
            optimizer=optimizer,
            loss_function=build_objective(self.config, distributed=self.ctx.distributed),
            scheduler=scheduler,
            amp=self.amp,
            world_size=self.ctx.world_size,
            handlers=self.handlers("contrastive", stats, [], self.checkpoint_save(0, parts)),
        )
        if resume is not None:
            self.restore_models(resume.state)
            self.resume_engine(trainer, sampler, per_rank, resume.state, optimizer, scheduler, stats)
        trainer.run()
        self.records["contrastive"] = self._metrics.records
        self.print_summary("contrastive")

    # ----------------------------------------------------------------------------------------------------- stage 2
    def run_classifier(self, resume: _Resume | None, end_to_end: bool = False, joint: bool = False) -> Path | None:
        """Stage 2; with ``end_to_end`` the ``asl`` baseline: encoder + head trained together with ASL on raw
        pooled features, for the two-stage budget (contrastive.epochs + classifier.epochs), the encoder at
        ``classifier.encoder_lr`` (or ``classifier.lr`` when that is 0).

        With ``joint`` (``mode: joint``, see :mod:`probmcl_med.engine.joint`): encoder + MDN + head in one stage
        with ASL + NLL + lambda * PCL on two augmented views per image, for the same budget (contrastive.epochs +
        classifier.epochs), ``contrastive.batch_size`` images per step (incomplete last batch dropped, as in stage
        1), the head at ``classifier.lr`` reading the unit-norm h, the encoder at ``classifier.encoder_lr`` (or
        ``contrastive.lr`` when that is 0), the MDN at ``contrastive.lr``. Logged and checkpointed as the
        ``classifier`` stage (validation mAP, best-epoch bundle)."""
        from probmcl_med.core.losses import classification_loss
        from probmcl_med.data.transforms import build_eval_transform, build_train_transform
        from probmcl_med.engine.classifier import (
            ClassifierTrainer,
            freeze,
            validation_map,
        )
        from probmcl_med.models.heads import Classifier, LinearHead

        k, d = self.config.classifier, self.config.dataset
        mean, std = self.mean_std
        c = self.config.contrastive
        frozen = k.encoder_lr == 0 and not end_to_end and not joint
        encoder_lr = (k.encoder_lr or k.lr) if end_to_end else (k.encoder_lr or c.lr) if joint else k.encoder_lr
        epochs = k.epochs + c.epochs if end_to_end or joint else k.epochs
        self.normalize_features = not end_to_end
        if frozen:
            freeze(self.encoder)
        head = LinearHead(self.encoder.num_features, len(self.class_names)).to(self.ctx.device)
        classifier = Classifier(self.encoder_fwd, head, normalize_features=self.normalize_features)
        if resume is not None and resume.stage_index == 1:
            head.load_state_dict(resume.state["models"]["head"])

        eval_transform = build_eval_transform(d.image_size, mean, std)
        cache = frozen and k.cache_features and not k.augment and not joint
        val_source: Any = None
        if self.val_ds is not None:
            self.val_ds.transform = eval_transform
            val_source = self.val_ds
        if cache:
            self.train_ds.transform = eval_transform
            plain, _ = self.loader(
                self.train_ds, k.batch_size, shuffle=False, drop_last=False, workers=self.config.workers, shard=False
            )
            train_source: Any = compute_features(classifier, plain, self.ctx.device, self.amp.autocast)
            if self.val_ds is not None and self.ctx.is_main:
                vloader, _ = self.loader(
                    self.val_ds, k.batch_size, shuffle=False, drop_last=False, workers=0, shard=False
                )
                val_source = compute_features(classifier, vloader, self.ctx.device, self.amp.autocast)
        else:
            augmented = build_train_transform(d.image_size, mean, std, **d.augment.model_dump())
            self.train_ds.transform = augmented if k.augment else eval_transform
            if joint:  # the contrastive term needs two augmented views, whatever classifier.augment says
                from probmcl_med.data.transforms import TwoViews

                self.train_ds.transform = TwoViews(augmented)
            train_source = self.train_ds
        stage_batch = (c.batch_size, "contrastive") if joint else (k.batch_size, "classifier")
        per_rank = self.per_rank_batch(stage_batch[0], len(train_source), stage_batch[1])
        loader, sampler = self.loader(
            train_source, per_rank, shuffle=True, drop_last=joint, workers=0 if cache else self.config.workers
        )

        if joint:
            from probmcl_med.engine.contrastive import build_objective
            from probmcl_med.engine.joint import JointModel, JointObjective, JointTrainer, joint_parameter_groups

            if self.mdn is None:
                self.mdn = self.build_mdn()
            groups = joint_parameter_groups(head, self.encoder, self.mdn, k.lr, encoder_lr, c.lr)
        else:
            groups = [{"params": list(head.parameters()), "lr": k.lr}]
            if not frozen:
                groups.append({"params": list(self.encoder.parameters()), "lr": encoder_lr})
        optimizer = torch.optim.Adam(groups, lr=k.lr, weight_decay=k.weight_decay)
        scheduler = one_cycle(optimizer, [g["lr"] for g in groups], epochs * len(loader))
        if joint:
            network = self.wrap(JointModel(self.encoder_fwd, self.mdn, head))
        else:
            network = self.wrap(head if frozen else classifier)
        stats = EpochStats(self.ctx, "classifier")
        best: dict[str, Any] = {"map": None, "epoch": None, "head": None, "encoder": None}
        if resume is not None and resume.stage_index == 1 and resume.state.get("best"):
            best.update(resume.state["best"])

        def validate(engine: Any) -> None:
            summary = engine.state.epoch_summary
            if not self.ctx.is_main:
                return
            improved = True
            if val_source is not None:
                vl, _ = self.loader(val_source, k.batch_size, shuffle=False, drop_last=False, workers=0, shard=False)
                out = predict_batches(classifier, vl, self.ctx.device, autocast=self.amp.autocast)
                val = validation_map(out.probs, out.targets, self.class_names)
                summary.update({f"val_{key}": value for key, value in val.items()})
                value = val["mAP"] if val["mAP"] is not None else -1.0
                improved = best["map"] is None or value > best["map"]
                if improved:
                    best["map"] = value
            if improved:
                best["epoch"] = engine.state.epoch
                best["head"] = cpu_state(head)
                best["encoder"] = None if frozen else cpu_state(self.encoder)
                self.write_bundle(head, best)
            summary["best_epoch"] = best["epoch"]

        def parts() -> dict[str, Any]:
            models = {"encoder": cpu_state(self.encoder), "head": cpu_state(head)}
            if self.mdn is not None:
                models["mdn"] = cpu_state(self.mdn)
                models["mdn_spec"] = self.mdn.spec
            return {
                "models": models,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": self.amp.scaler.state_dict() if self.amp.scaler is not None else None,
                "epoch_stats": stats.state_dict(),
                "best": dict(best),
            }

        class _Validation:
            def attach(self, engine: Any) -> None:
                from ignite.engine import Events

                engine.add_event_handler(Events.EPOCH_COMPLETED, validate)

        asl = classification_loss(
            k.loss, gamma_neg=k.gamma_neg, gamma_pos=k.gamma_pos, clip=k.clip, focal_gamma=k.focal_gamma
        )
        common: dict[str, Any] = {
            "device": self.ctx.device,
            "max_epochs": epochs,
            "train_data_loader": loader,
            "network": network,
            "optimizer": optimizer,
            "scheduler": scheduler,
            "amp": self.amp,
            "world_size": self.ctx.world_size,
            "handlers": self.handlers("classifier", stats, [_Validation()], self.checkpoint_save(1, parts)),
        }
        if joint:
            objective = JointObjective(asl, build_objective(self.config, distributed=self.ctx.distributed))
            trainer: Any = JointTrainer(loss_function=objective, **common)
        else:
            trainer = ClassifierTrainer(classifier=classifier, frozen_encoder=frozen, loss_function=asl, **common)
        if resume is not None and resume.stage_index == 1:
            self.resume_engine(trainer, sampler, per_rank, resume.state, optimizer, scheduler, stats)
        trainer.run()
        self.records["classifier"] = self._metrics.records
        self.best = best
        self.print_summary("classifier")
        barrier(self.ctx)
        if best["head"] is None and self.ctx.is_main:  # zero epochs: save the untrained head
            best.update(head=cpu_state(head), encoder=None)
            self.write_bundle(head, best)
        return self.out / "model.pt"

    def write_bundle(self, head: nn.Module, best: dict[str, Any]) -> Path:
        """RUN/model.pt with the best head (and fine-tuned encoder), atomically; rank 0 only."""
        from probmcl_med.models.encoders import get_encoder
        from probmcl_med.models.heads import LinearHead

        encoder = self.encoder
        if best.get("encoder") is not None:  # fine-tuned: the best epoch's encoder, not the current one
            e = self.config.encoder
            encoder = get_encoder(e.name, **dict(e.options))
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
            encoder_name=self.config.encoder.name,
            encoder_options=dict(self.config.encoder.options),
            normalize_features=getattr(self, "normalize_features", True),
            dataset=DatasetSource.from_config_dict(config),
            training_config=config,
            best_val_map=best.get("map"),
            best_epoch=best.get("epoch"),
        )

    def print_summary(self, stage: str) -> None:
        records = self.records.get(stage) or []
        if self.console is not None and records:
            self.console.print(summary_table(stage, records))

    # ----------------------------------------------------------------------------------------------------- driver
    def run(self, stage: str = "all", resume: bool = False) -> RunResult:
        stages = stages_to_run(stage)
        if self.config.mode in ("asl", "joint"):  # one stage: end-to-end ASL, or ASL + NLL + lambda * PCL
            stages = ("classifier",)
        seed_everything(self.config.seed, self.config.deterministic)
        self.build_encoder()
        self.build_data()
        self.write_run_files()
        found = self.find_resume(resume, stages)
        self.truncate_metrics(found, stages)
        model_path = None

        if "contrastive" in stages and self.config.contrastive.epochs > 0:
            if found is not None and (found.stage_index >= 1 or found.state.get("complete")):
                self.restore_models(found.state)
            else:
                self.run_contrastive(found)
        elif found is not None:
            self.restore_models(found.state)
        elif "classifier" in stages and stage == "classifier":
            self.log("no finished contrastive stage in this run folder: the classifier uses the configured encoder")

        if "classifier" in stages:
            resume_2 = found if found is not None and found.stage_index == 1 else None
            if resume_2 is not None and resume_2.state.get("complete"):
                self.log(f"{self.out}: the classifier stage had finished; nothing left to run")
                model_path = self.out / "model.pt"
            else:
                model_path = self.run_classifier(
                    resume_2, end_to_end=self.config.mode == "asl", joint=self.config.mode == "joint"
                )
        barrier(self.ctx)
        return RunResult(
            self.out, model_path, self.records, best_map=self.best.get("map"), best_epoch=self.best.get("epoch")
        )


def train(config: RunConfig, *, stage: str = "all", resume: bool = False, console: Console | None = None) -> RunResult:
    """Run ProbMCL training as configured; DDP when started by ``torchrun`` with several processes.

    Args:
        config: the resolved run configuration.
        stage: ``contrastive``, ``classifier`` or ``all``.
        resume: continue from the newest readable checkpoint in ``config.output_dir/checkpoints``.
        console: where progress bars, epoch lines and summary tables go (None: silent).

    Raises:
        ConfigError, DataError, CheckpointError: one-line user errors (bad option, data, or checkpoint).
    """
    ctx = setup_distributed(config.device)
    try:
        return Run(config, ctx, console).run(stage=stage, resume=resume)
    finally:
        if ctx.distributed:
            cleanup_distributed()
