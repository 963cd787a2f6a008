"""The two kinds of training stage, built from plain settings that a mode read from its own config keys.

* :func:`train_contrastive`: encoder + MDN on two views per image with NLL + lambda * PCL (paper Eq. 4).
* :func:`train_classifier`: a linear head on a frozen or trained encoder with a multi-label loss, validated each
  epoch (:class:`~probmcl_med.engine.validation.Validation`) and saved as the bundle at its best epoch; with
  :class:`JointTerms` also the MDN, on two views per image, with the contrastive objective added (mode joint).

Conventions: ``batch_size`` is the GLOBAL number of images per step (each of ``K`` DDP ranks takes
``batch_size / K``); stages on two views drop the last incomplete batch of an epoch (equal batches on every rank,
so the distributed loss is exactly the single-process one); Adam and OneCycleLR stepped per iteration
(``pct_start=0.2`` as in the ASL training script); images/s counts images, not views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from probmcl_med.config.schema import ContrastiveConfig
from probmcl_med.data.transforms import TwoViews
from probmcl_med.engine.classifier import ClassifierStep, freeze
from probmcl_med.engine.contrastive import ContrastiveModel, ContrastiveStep, build_objective
from probmcl_med.engine.distributed import barrier
from probmcl_med.engine.handlers import EpochStats
from probmcl_med.engine.joint import JointModel, JointObjective, JointStep, joint_parameter_groups
from probmcl_med.engine.session import Resume, Session
from probmcl_med.engine.steps import make_trainer
from probmcl_med.engine.validation import Validation
from probmcl_med.inference.features import ConsoleBar, EncoderIdentity, Preprocessing, cached_features
from probmcl_med.models.heads import Classifier, LinearHead

ONE_CYCLE_PCT_START = 0.2
WARMUP_FRACTION = 0.05
"""``warmup-cosine``: the share of a stage's iterations spent warming up linearly from 0 (rounded, at most T - 1)."""


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """The lr multiplier of ``warmup-cosine`` at iteration ``step`` (0-based) of ``total_steps``.

    ``step / W`` for the first ``W = warmup_steps`` iterations (a linear warm-up from 0), then one half cosine over the
    remaining ``T - W``: ``(1 + cos(pi (step - W) / (T - W))) / 2``, from 1 down towards 0 (reached one step after
    the last). The same values as timm's ``CosineLRScheduler(t_initial=T - W, warmup_t=W, warmup_lr_init=0,
    warmup_prefix=True, lr_min=0)`` stepped per update (tests/test_lr_schedule.py).
    """
    if step < warmup_steps:
        return step / warmup_steps
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))


def lr_scheduler(kind: str, optimizer: torch.optim.Optimizer, max_lrs: list[float], total_steps: int) -> Any:
    """The per-iteration learning-rate schedule of a stage (``lr_schedule``), over ``total_steps`` iterations.

    - ``warmup-cosine``: a linear warm-up from 0 over the first 5 % of the steps (:data:`WARMUP_FRACTION`), then a
      cosine decay to 0 (:func:`warmup_cosine_factor`; a ``LambdaLR``, so it checkpoints and resumes exactly);
    - ``onecycle``: ``OneCycleLR`` peaking at ``max_lrs`` after 20 % of the steps (``pct_start`` of the ASL training
      script; it also cycles Adam's beta1 between 0.85 and 0.95);
    - ``cosine``: ``max_lr * (1 + cos(pi t / T)) / 2`` from the first step, no warm-up;
    - ``constant``: ``max_lrs`` throughout.
    """
    steps = max(1, total_steps)
    if kind == "warmup-cosine":
        warmup = min(round(WARMUP_FRACTION * steps), steps - 1)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: warmup_cosine_factor(t, steps, warmup))
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=max_lrs, total_steps=steps, pct_start=ONE_CYCLE_PCT_START
        )
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=0.0)
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise ValueError(f"lr_schedule {kind!r}: use warmup-cosine, onecycle, cosine or constant")


def train_contrastive(session: Session, c: ContrastiveConfig, resume: Resume | None) -> None:
    """Stage 1 for ``c.epochs`` passes; leaves the trained MDN in ``session.mdn`` and the encoder in place."""
    s = session
    s.train_ds.transform = TwoViews(s.train_transform())
    per_rank = s.per_rank_batch(c.batch_size, len(s.train_ds), "contrastive")
    loader, sampler = s.loader(s.train_ds, per_rank, shuffle=True, drop_last=True, workers=s.config.workers)
    s.mdn = s.build_mdn(c)
    network = s.wrap(ContrastiveModel(s.encoder_fwd, s.mdn))
    optimizer = torch.optim.Adam([*s.encoder.parameters(), *s.mdn.parameters()], lr=c.lr, weight_decay=c.weight_decay)
    scheduler = lr_scheduler(s.config.lr_schedule, optimizer, [c.lr], c.epochs * len(loader))
    stats = EpochStats(s.ctx)
    trainer = make_trainer(
        ContrastiveStep(s.amp, s.ctx.world_size),
        device=s.ctx.device,
        max_epochs=c.epochs,
        loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=build_objective(c, distributed=s.ctx.distributed, mdn=s.mdn),
        handlers=s.handlers(0, stats, scheduler, optimizer, lambda: {"models": s.model_states()}),
    )
    if resume is not None:
        s.restore_models(resume.state, lambda: s.build_mdn(c))
        s.resume_engine(trainer, sampler, per_rank, resume.state, optimizer, scheduler, stats)
    trainer.run()
    s.finish_stage("contrastive")


@dataclass(frozen=True)
class JointTerms:
    """Mode joint's additions to the classifier stage: the MDN and the contrastive objective of its section."""

    contrastive: ContrastiveConfig
    mdn_lr: float


@dataclass(frozen=True)
class HeadTraining:
    """How a mode trains its classifier stage, as plain values read from that mode's own keys.

    Attributes:
        epochs: passes over the training set.
        batch_size: global images per training step; ``batch_key`` is the config section it came from.
        val_batch_size: images per validation (and feature-caching) step.
        head_lr: the head's OneCycle peak learning rate; ``weight_decay``: Adam's, for every group.
        loss: the multi-label loss on the logits.
        encoder_lr: 0 freezes the encoder (eval mode, no gradient); else its learning rate.
        normalize_features: the head reads unit-norm features (ProbMCL) or raw pooled ones (asl).
        augment: augmented training views (else the deterministic transform).
        cache_features: with a frozen encoder and no augmentation, compute the features once.
        joint: mode joint's MDN and contrastive objective, on two views per image.
    """

    epochs: int
    batch_size: int
    batch_key: str
    val_batch_size: int
    head_lr: float
    weight_decay: float
    loss: nn.Module
    encoder_lr: float = 0.0
    normalize_features: bool = True
    augment: bool = True
    cache_features: bool = False
    joint: JointTerms | None = None


def _cached(s: Session, plan: HeadTraining, classifier: Classifier, dataset: Any) -> Any:
    """``dataset``'s frozen features from the disk cache (computed into it on a miss): the feature cache's one call."""
    e = s.config.encoder
    mean, std = s.mean_std
    return cached_features(
        classifier,
        dataset,
        encoder=EncoderIdentity(e.name, dict(e.options)),
        preprocessing=Preprocessing(s.config.dataset.image_size, mean, std, s.stain),
        batch_size=plan.val_batch_size,
        device=s.ctx.device,
        workers=s.config.workers,
        autocast=s.amp.autocast,
        progress=ConsoleBar(s.console),
        precision="float32" if s.amp.name == "off" else s.amp.name,
    )


def _sources(s: Session, plan: HeadTraining, classifier: Classifier, frozen: bool) -> tuple[Any, Any, bool]:
    """(training source, validation source or None, cached?): datasets with their transforms, or cached features."""
    eval_transform = s.eval_transform()
    val_source: Any = None
    if s.val_ds is not None:
        s.val_ds.transform = eval_transform
        val_source = s.val_ds
    if frozen and plan.cache_features and not plan.augment:
        s.train_ds.transform = eval_transform
        train_source = _cached(s, plan, classifier, s.train_ds)
        if s.val_ds is not None and s.ctx.is_main:
            val_source = _cached(s, plan, classifier, s.val_ds)
        return train_source, val_source, True
    augmented = s.train_transform()
    s.train_ds.transform = augmented if plan.augment else eval_transform
    if plan.joint is not None:  # the contrastive term needs two augmented views
        s.train_ds.transform = TwoViews(augmented)
    return s.train_ds, val_source, False


def train_classifier(session: Session, plan: HeadTraining, resume: Resume | None) -> Path:
    """The classifier stage for ``plan.epochs`` passes; returns RUN/model.pt (the best validation epoch's model)."""
    s, joint = session, plan.joint
    frozen = plan.encoder_lr == 0 and joint is None
    if frozen:
        freeze(s.encoder)
    head = LinearHead(s.encoder.num_features, len(s.class_names)).to(s.ctx.device)
    classifier = Classifier(s.encoder_fwd, head, normalize_features=plan.normalize_features)
    own = resume if resume is not None and resume.stage_index == 1 else None
    if own is not None:
        head.load_state_dict(own.state["models"]["head"])
    train_source, val_source, cached = _sources(s, plan, classifier, frozen)
    per_rank = s.per_rank_batch(plan.batch_size, len(train_source), plan.batch_key)
    workers = 0 if cached else s.config.workers
    loader, sampler = s.loader(train_source, per_rank, shuffle=True, drop_last=joint is not None, workers=workers)

    if joint is not None:
        if s.mdn is None:
            s.mdn = s.build_mdn(joint.contrastive)
        groups = joint_parameter_groups(head, s.encoder, s.mdn, plan.head_lr, plan.encoder_lr, joint.mdn_lr)
        network = s.wrap(JointModel(s.encoder_fwd, s.mdn, head))
        objective = build_objective(joint.contrastive, distributed=s.ctx.distributed, mdn=s.mdn)
        loss_function: nn.Module = JointObjective(plan.loss, objective)
        step: Any = JointStep(s.amp, s.ctx.world_size)
    else:
        groups = [{"params": list(head.parameters()), "lr": plan.head_lr}]
        if not frozen:
            groups.append({"params": list(s.encoder.parameters()), "lr": plan.encoder_lr})
        network = s.wrap(head if frozen else classifier)
        loss_function = plan.loss
        step = ClassifierStep(classifier, frozen, amp=s.amp, world_size=s.ctx.world_size)
    optimizer = torch.optim.Adam(groups, lr=plan.head_lr, weight_decay=plan.weight_decay)
    scheduler = lr_scheduler(s.config.lr_schedule, optimizer, [g["lr"] for g in groups], plan.epochs * len(loader))
    stats = EpochStats(s.ctx)

    def val_batches() -> Any:
        return s.loader(val_source, plan.val_batch_size, shuffle=False, drop_last=False, workers=0, shard=False)[0]

    validation = Validation(
        classifier,
        val_batches if val_source is not None else None,
        s.class_names,
        s.ctx.device,
        s.amp.autocast,
        frozen_encoder=frozen,
        save_best=lambda best: s.write_bundle(head, best, plan.normalize_features, feature_cache=cached),
        is_main=s.ctx.is_main,
        best=own.state.get("best") if own is not None else None,
    )
    trainer = make_trainer(
        step,
        device=s.ctx.device,
        max_epochs=plan.epochs,
        loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=loss_function,
        handlers=s.handlers(
            1,
            stats,
            scheduler,
            optimizer,
            lambda: {"models": s.model_states(head=head), "best": validation.state_dict()},
            extra=(validation,),
        ),
    )
    if own is not None:
        s.resume_engine(trainer, sampler, per_rank, own.state, optimizer, scheduler, stats)
    trainer.run()
    s.finish_stage("classifier")
    s.best = validation.best
    barrier(s.ctx)
    if validation.best["head"] is None and s.ctx.is_main:  # zero epochs: save the untrained head
        validation.keep(None)
    return s.out / "model.pt"
