"""The training modes, one class each, each reading only its own config keys (``config.UNUSED_KEYS`` lists the rest).

- ``two-stage`` (:class:`TwoStage`, the paper): the contrastive stage (encoder + MDN, NLL + lambda PCL) for
  ``contrastive.epochs``, then a linear head on the frozen encoder (fine-tuned with ``classifier.encoder_lr > 0``)
  for ``classifier.epochs``.
- ``asl`` (:class:`EndToEnd`): encoder + linear head end to end on the raw pooled features with the classifier
  loss, for ``epochs``.
- ``joint`` (:class:`Joint`): encoder + MDN + head in one stage, loss + NLL + lambda PCL on two views per image, for
  ``epochs``.

``--stage`` names a stage of two-stage (``contrastive``, ``classifier``); the one-stage modes refuse it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from probmcl_med.config import RunConfig
from probmcl_med.core.classification import classification_loss
from probmcl_med.engine.session import STAGES, Resume, Session
from probmcl_med.engine.stages import HeadTraining, JointTerms, train_classifier, train_contrastive
from probmcl_med.errors import ConfigError


def _head(config: RunConfig, **settings: Any) -> HeadTraining:
    """The classifier-stage settings every mode takes from the ``classifier`` section (head lr, weight decay, the
    loss, validation batches), with the mode's own ``settings``."""
    k = config.classifier
    loss = classification_loss(
        k.loss, gamma_neg=k.gamma_neg, gamma_pos=k.gamma_pos, clip=k.clip, focal_gamma=k.focal_gamma
    )
    shared = {"val_batch_size": k.batch_size, "head_lr": k.lr, "weight_decay": k.weight_decay, "loss": loss}
    return HeadTraining(**{**shared, **settings})


class TwoStage:
    """``mode: two-stage``: reads the ``contrastive`` and ``classifier`` sections (their epochs are the stages')."""

    def __init__(self, config: RunConfig) -> None:
        self.contrastive = config.contrastive
        k = config.classifier
        self.head = _head(
            config,
            epochs=k.epochs,
            batch_size=k.batch_size,
            batch_key="classifier",
            encoder_lr=k.encoder_lr,
            normalize_features=True,
            augment=k.augment,
            cache_features=k.cache_features,
        )

    @staticmethod
    def stages(stage: str) -> tuple[str, ...]:
        """``all`` -> both stages; else the one named."""
        return STAGES if stage == "all" else (stage,)

    def run(self, session: Session, stages: tuple[str, ...], found: Resume | None) -> Path | None:
        s = session

        def build_mdn() -> object:
            return s.build_mdn(self.contrastive)

        if "contrastive" in stages and self.contrastive.epochs > 0:
            if found is not None and (found.stage_index >= 1 or found.state.get("complete")):
                s.restore_models(found.state, build_mdn)
            else:
                train_contrastive(s, self.contrastive, found)
        elif found is not None:
            s.restore_models(found.state, build_mdn)
        elif stages == ("classifier",):
            s.log("no finished contrastive stage in this run folder: the classifier uses the configured encoder")
        if "classifier" not in stages:
            return None
        return finish_or_train(s, self.head, found)


class EndToEnd:
    """``mode: asl``: reads ``epochs`` and the ``classifier`` section (but its epochs and cache_features)."""

    def __init__(self, config: RunConfig) -> None:
        k = config.classifier
        self.head = _head(
            config,
            epochs=config.epochs,
            batch_size=k.batch_size,
            batch_key="classifier",
            encoder_lr=k.encoder_lr or k.lr,
            normalize_features=False,
            augment=k.augment,
        )

    @staticmethod
    def stages(stage: str) -> tuple[str, ...]:
        return ("classifier",)

    def run(self, session: Session, stages: tuple[str, ...], found: Resume | None) -> Path | None:
        if found is not None:
            session.restore_models(found.state)
        return finish_or_train(session, self.head, found)


class Joint:
    """``mode: joint``: reads ``epochs``, the ``contrastive`` section (batches, lr, objective, MDN) and the
    ``classifier`` section's head settings and loss (its batch size only for validation)."""

    def __init__(self, config: RunConfig) -> None:
        c, k = config.contrastive, config.classifier
        self.contrastive = c
        self.head = _head(
            config,
            epochs=config.epochs,
            batch_size=c.batch_size,
            batch_key="contrastive",
            encoder_lr=k.encoder_lr or c.lr,
            normalize_features=True,
            joint=JointTerms(contrastive=c, mdn_lr=c.lr),
        )

    stages = EndToEnd.stages

    def run(self, session: Session, stages: tuple[str, ...], found: Resume | None) -> Path | None:
        if found is not None:
            session.restore_models(found.state, lambda: session.build_mdn(self.contrastive))
        return finish_or_train(session, self.head, found)


def finish_or_train(session: Session, head: HeadTraining, found: Resume | None) -> Path:
    """Train the classifier stage, or, when the run folder's newest checkpoint says it finished, nothing."""
    own = found if found is not None and found.stage_index == 1 else None
    if own is not None and own.state.get("complete"):
        session.log(f"{session.out}: the classifier stage had finished; nothing left to run")
        return session.out / "model.pt"
    return train_classifier(session, head, own)


MODES: dict[str, type[TwoStage] | type[EndToEnd] | type[Joint]] = {
    "two-stage": TwoStage,
    "asl": EndToEnd,
    "joint": Joint,
}


def stages_for(mode: str, stage: str) -> tuple[str, ...]:
    """The stages ``--stage`` runs in ``mode``; a typo, or a stage of a mode that has one, is a one-line ConfigError."""
    if stage not in ("all", *STAGES):
        raise ConfigError(f"--stage {stage!r}: use contrastive, classifier or all")
    if mode != "two-stage" and stage != "all":
        raise ConfigError(
            f"--stage {stage}: mode {mode} trains in one stage, so there is no stage to pick; --stage is for mode "
            "two-stage (drop it, or --set mode=two-stage)"
        )
    return MODES[mode].stages(stage)
