"""The classifier stage: a linear head on a frozen or trained encoder, trained with a multi-label loss, validated each
epoch, and saved as ``RUN/model.pt`` at its best validation epoch.

Paper Sec. 3.3; ASL as published (docs/math.md s.9), or BCE / focal (``classifier.loss``). A frozen encoder stays in
eval mode with ``requires_grad=False`` and runs under ``torch.no_grad``, so batch-norm statistics and weights are
untouched; without augmentation its features are computed once (:func:`probmcl_med.inference.features.
compute_features`) and the head trains on them. A trained encoder (``classifier.encoder_lr > 0``, or mode ``asl``)
is a second optimiser parameter group.

:class:`ClassifierStage` is two-stage's second stage, probe's only one (a head on unit-norm features) and asl's only
one (encoder and head end to end on raw features).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from probmcl_med.config.sections import HeadConfig
from probmcl_med.core.classification import classification_loss
from probmcl_med.engine.divergence import classifier_cause
from probmcl_med.engine.steps import TrainStep
from probmcl_med.engine.training import Carried, StageRun, model_states
from probmcl_med.engine.validation import best_record, bundle_writer, validation_handlers
from probmcl_med.inference.features import ConsoleBar, EncoderIdentity, Preprocessing, cached_features
from probmcl_med.models.heads import Classifier, LinearHead


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` on every parameter; returns the module."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def head_loss(k: HeadConfig) -> nn.Module:
    """The multi-label loss the ``classifier`` section names (``bce``, ``focal`` or ``asl``) with its settings."""
    return classification_loss(
        k.loss, gamma_neg=k.gamma_neg, gamma_pos=k.gamma_pos, clip=k.clip, focal_gamma=k.focal_gamma
    )


class ClassifierStep(TrainStep):
    """The classifier-stage iteration; the loss is logged under its name (``bce``, ``focal``, ``asl``).

    ``engine.network`` is what the optimiser trains: the (DDP-wrapped) head when the encoder is frozen, the whole
    (DDP-wrapped) classifier when it is trained. ``classifier`` is the plain encoder + head.
    """

    stage = "classifier"

    def __init__(self, classifier: Classifier, frozen_encoder: bool, loss_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.classifier = classifier
        self.frozen_encoder = frozen_encoder
        self.loss_name = loss_name

    def train_mode(self, engine: Any) -> None:
        engine.network.train()
        if self.frozen_encoder:
            self.classifier.encoder.eval()

    def forward(self, engine: Any, batch: dict[str, Any]) -> dict[str, Any]:
        device, non_blocking = engine.state.device, engine.non_blocking
        labels = batch["label"].to(device, non_blocking=non_blocking).float()
        if "features" in batch:
            logits = engine.network(batch["features"].to(device, non_blocking=non_blocking))
        elif self.frozen_encoder:
            with torch.no_grad():
                h = self.classifier.embed(batch["image"].to(device, non_blocking=non_blocking))
            logits = engine.network(h)
        else:
            logits = engine.network(batch["image"].to(device, non_blocking=non_blocking))
        return {"logits": logits, "labels": labels}

    def compute_loss(self, engine: Any, forward: dict[str, Any]) -> dict[str, Tensor]:
        loss = engine.loss_function(forward["logits"].float(), forward["labels"])
        return {"loss": loss, self.loss_name: loss.detach()}

    def diagnose(self, engine: Any, forward: dict[str, Any], terms: dict[str, Tensor]) -> str:
        return classifier_cause(engine.loss_function, forward, terms)


@dataclass(frozen=True)
class ClassifierStage:
    """A linear head (and, with ``encoder_lr > 0``, the encoder) trained for ``epochs`` passes.

    Attributes:
        head: the ``classifier`` section: the head's lr, weight decay, batches and loss.
        epochs: passes over the training set.
        encoder_lr: 0 freezes the encoder; else its learning rate.
        unit_norm: the head reads unit-norm features (two-stage, probe) or raw pooled ones (asl).
        augment: augmented training views, else the deterministic transform (a frozen encoder's features cached).
        length_key: the config key of ``epochs`` (for a resume's ``--extend``).
    """

    head: HeadConfig
    epochs: int
    encoder_lr: float
    unit_norm: bool
    augment: bool
    length_key: str
    name = "classifier"
    sections = ("classifier",)
    trains_objective = False

    @property
    def trains_encoder(self) -> bool:
        return self.encoder_lr > 0

    def run(self, run: StageRun, carried: Carried) -> Carried:
        k, inputs, device = self.head, run.inputs, run.ctx.device
        encoder = inputs.encoder
        frozen = not self.trains_encoder
        if frozen:
            freeze(encoder)
        head = LinearHead(int(encoder.num_features), inputs.num_classes).to(device)
        if run.resume is not None:
            head.load_state_dict(run.resume.state["models"]["head"])
        classifier = Classifier(inputs.encoder_fwd, head, normalize_features=self.unit_norm)
        train_source, val_source, cached = self.sources(run, classifier, frozen)
        per_rank = run.per_rank_batch(k.batch_size, len(train_source), "classifier")
        workers = 0 if cached else run.workers
        loader, sampler = run.loader(train_source, per_rank, shuffle=True, drop_last=False, workers=workers)
        groups = [{"params": list(head.parameters()), "lr": k.lr}]
        if not frozen:
            groups.append({"params": list(encoder.parameters()), "lr": self.encoder_lr})
        optimizer = torch.optim.Adam(groups, lr=k.lr, weight_decay=k.weight_decay)
        plain = Classifier(encoder, head, normalize_features=self.unit_norm)
        validation = validation_handlers(
            plain,
            None if val_source is None else run.batches(val_source, k.batch_size),
            inputs.class_names,
            device,
            run.amp.autocast,
            save=bundle_writer(inputs, run.session.out, head, carried.mdn, self.unit_norm, feature_cache=cached),
            best=run.resume.state.get("best") if run.resume is not None else None,
            is_main=run.ctx.is_main,
        )
        run.train(
            ClassifierStep(classifier, frozen, k.loss, amp=run.amp, world_size=run.ctx.world_size),
            network=run.wrap(head if frozen else classifier),
            optimizer=optimizer,
            loss_function=head_loss(k),
            loader=loader,
            sampler=sampler,
            per_rank=per_rank,
            epochs=self.epochs,
            models=lambda: model_states(encoder=encoder, head=head, mdn=carried.mdn),
            extra=validation,
            best=(lambda: validation[-1].state_dict()) if validation else None,
        )
        return Carried(mdn=carried.mdn, best=best_record(validation))

    def cached(self, run: StageRun, classifier: Classifier, dataset: Any) -> Any:
        """``dataset``'s frozen features from the disk cache (computed into it on a miss): the stage's one call of
        the feature cache (:func:`probmcl_med.inference.features.cached_features`)."""
        inputs, e = run.inputs, run.config.encoder
        return cached_features(
            classifier,
            dataset,
            encoder=EncoderIdentity(e.name, dict(e.options)),
            preprocessing=Preprocessing(run.config.dataset.image_size, *inputs.mean_std, inputs.stain),
            batch_size=self.head.batch_size,
            device=run.ctx.device,
            workers=run.workers,
            autocast=run.amp.autocast,
            progress=ConsoleBar(run.session.console),
            precision="float32" if run.amp.name == "off" else run.amp.name,
        )

    def sources(self, run: StageRun, classifier: Classifier, frozen: bool) -> tuple[Any, Any, bool]:
        """(training source, validation source or None, cached?): views of the datasets with this stage's
        transforms, or, with a frozen encoder and no augmentation, the features computed once."""
        inputs = run.inputs
        plain = inputs.eval_transform()
        val = None if inputs.val_ds is None else inputs.view(inputs.val_ds, plain)
        if frozen and not self.augment:
            train = self.cached(run, classifier, inputs.view(inputs.train_ds, plain))
            if val is not None and run.ctx.is_main:
                val = self.cached(run, classifier, val)
            return train, val, True
        train = inputs.view(inputs.train_ds, inputs.train_transform() if self.augment else plain)
        return train, val, False
