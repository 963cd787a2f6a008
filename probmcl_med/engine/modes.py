"""Each training mode as a list of stage objects, built from the mode's typed config.

=============  ==============================================================================================
mode           stages
=============  ==============================================================================================
``asl``        :class:`ClassifierStage`: the encoder and a head on raw features, end to end, ``epochs`` passes
``two-stage``  :class:`ContrastiveStage` (``contrastive.epochs``), then :class:`ClassifierStage`: a head on the
               unit-norm features of the frozen (or, ``classifier.encoder_lr > 0``, fine-tuned) encoder
``probe``      :class:`ClassifierStage` of two-stage alone, on the encoder as configured
``joint``      :class:`JointStage`: encoder + MDN + head, ``epochs`` passes
=============  ==============================================================================================

A stage owns its model, loss, step, transform and loader (``run(run, carried) -> carried``); what it hands the next
stage is explicit (:class:`~probmcl_med.engine.training.Carried`). ``--stage`` picks stages of two-stage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from probmcl_med.config import AslConfig, JointConfig, ProbeConfig, RunBase, RunConfig, TwoStageConfig
from probmcl_med.config.schema import add_mode
from probmcl_med.engine.classifier import ClassifierStage
from probmcl_med.engine.contrastive import ContrastiveStage
from probmcl_med.engine.joint import JointStage
from probmcl_med.errors import ConfigError

Stage = ContrastiveStage | ClassifierStage | JointStage


def _two_stage(c: TwoStageConfig) -> list[Stage]:
    k = c.classifier
    return [
        ContrastiveStage(c.contrastive),
        ClassifierStage(k, k.epochs, k.encoder_lr, unit_norm=True, augment=k.augment, length_key="classifier.epochs"),
    ]


def _probe(c: ProbeConfig) -> list[Stage]:
    k = c.classifier
    return [
        ClassifierStage(k, k.epochs, k.encoder_lr, unit_norm=True, augment=k.augment, length_key="classifier.epochs")
    ]


def _asl(c: AslConfig) -> list[Stage]:
    k = c.classifier
    encoder_lr = k.lr if k.encoder_lr is None else k.encoder_lr
    return [ClassifierStage(k, c.epochs, encoder_lr, unit_norm=False, augment=k.augment, length_key="epochs")]


def _joint(c: JointConfig) -> list[Stage]:
    return [JointStage(c.contrastive, c.classifier, c.epochs)]


MODES: dict[str, Callable[[Any], list[Stage]]] = {
    "asl": _asl,
    "two-stage": _two_stage,
    "probe": _probe,
    "joint": _joint,
}
"""Per mode, its stages from its config (the keys match :data:`probmcl_med.config.MODE_CONFIGS`)."""


def register_mode(config: type[RunBase], stages: Callable[[Any], list[Any]]) -> str:
    """Add a training mode: its typed config (a :class:`~probmcl_med.config.RunBase` subclass whose ``mode`` is a
    ``Literal`` of its name, with the sections it reads) and ``stages(config) -> [stage, ...]``. Returns the name.

    See docs/architecture.md, "Adding a mode in one file".
    """
    name = add_mode(config)
    MODES[name] = stages
    return name


def stages_of(config: RunConfig) -> list[Stage]:
    """The mode's stages, in order."""
    return MODES[config.mode](config)


def selected(config: RunConfig, stages: list[Stage], stage: str) -> tuple[int, int]:
    """``--stage``: the range ``[first, last]`` of stage indices this command trains (``all``: every stage).

    Raises:
        ConfigError: a stage the mode does not have (one line naming the ones it has).
    """
    names = [s.name for s in stages]
    if stage == "all":
        return 0, len(stages) - 1
    if stage in names and len(stages) > 1:
        index = names.index(stage)
        return index, index
    if len(stages) == 1:
        raise ConfigError(
            f"--stage {stage}: mode {config.mode} trains in one stage, so there is no stage to pick; --stage is for "
            "mode two-stage (drop it, or --set mode=two-stage)"
        )
    raise ConfigError(f"--stage {stage!r}: use {', '.join(names)} or all")
