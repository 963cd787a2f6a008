"""One training iteration as MONAI's ``iteration_update``, and the stock trainer that runs it.

:func:`make_trainer` builds a plain ``monai.engines.SupervisedTrainer`` whose iteration is a :class:`TrainStep`
passed as ``iteration_update=`` (no overridden ``_iteration``): ``forward`` (under autocast) -> ``compute_loss``
(float32) -> a finite loss, else one :class:`~probmcl_med.errors.TrainingDiverged` line naming the step and the
component -> backward -> optimiser step, firing ``FORWARD_COMPLETED``, ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED`` and
``MODEL_COMPLETED`` like the stock iteration, so stock MONAI/ignite handlers attach unchanged. The learning-rate
schedule is stepped by MONAI's ``LrScheduleHandler`` at ``ITERATION_COMPLETED`` (:class:`IterationLrSchedule`).
The output dict carries the loss under MONAI's ``Keys.LOSS``, the loss terms under ``terms`` (each by its real
name: ``loss``, then ``bce``/``focal``/``asl``, ``nll``, ``pcl``), the learning rate the step used and the number
of images of the (global) batch. The steps of the stages: :class:`~probmcl_med.engine.contrastive.
ContrastiveStep`, :class:`~probmcl_med.engine.classifier.ClassifierStep`, :class:`~probmcl_med.engine.joint.JointStep`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import LrScheduleHandler
from monai.utils.enums import CommonKeys as Keys
from torch import nn

from probmcl_med.engine.amp import AmpSettings, backward, optimizer_step
from probmcl_med.engine.divergence import is_finite, kind
from probmcl_med.errors import TrainingDiverged

# Ignite logs "Engine run is terminating due to exception: ..." before re-raising; without a handler Python prints
# it to stderr, a second line beside the error the CLI reports. A NullHandler keeps it for those who configure logging.
logging.getLogger("ignite.engine").addHandler(logging.NullHandler())


class TrainStep:
    """``step(engine, batch) -> output``: one optimisation step on ``engine.network`` with ``engine.optimizer``.

    Args:
        amp: autocast dtype and GradScaler (see :mod:`probmcl_med.engine.amp`).
        world_size: DDP world size (to report global images per batch).
    """

    stage = "training"
    """The stage's name in messages."""

    def __init__(self, amp: AmpSettings, world_size: int = 1) -> None:
        self.amp = amp
        self.world_size = world_size

    # -- what a stage defines ---------------------------------------------------------------------------------------
    def train_mode(self, engine: SupervisedTrainer) -> None:
        """Put the trained modules in train mode (the classifier stage keeps a frozen encoder in eval mode)."""
        engine.network.train()

    def forward(self, engine: SupervisedTrainer, batch: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover
        """Run the network on a batch under autocast; return what ``compute_loss`` needs."""
        raise NotImplementedError

    def compute_loss(
        self, engine: SupervisedTrainer, forward: dict[str, Any]
    ) -> dict[str, torch.Tensor]:  # pragma: no cover
        """Float32 loss terms from the forward outputs: ``{"loss": total, each term by its name...}``
        (:data:`~probmcl_med.core.losses.LOSS_TERMS`)."""
        raise NotImplementedError

    def batch_images(self, batch: dict[str, Any]) -> int:
        """Images (not views) in this rank's batch."""
        return int(batch["label"].shape[0])

    def diagnose(self, engine: SupervisedTrainer, forward: dict[str, Any], terms: dict[str, torch.Tensor]) -> str:
        """Which component made the loss non-finite, in words (:mod:`probmcl_med.engine.divergence`)."""
        return "a loss term is not finite"

    def divergence(self, engine: SupervisedTrainer, forward: dict[str, Any], terms: dict[str, torch.Tensor]) -> str:
        """The one line a non-finite loss stops the run with: the step, where it is in its epoch, the cause."""
        it, length = int(engine.state.iteration), int(engine.state.epoch_length)
        where = f"step {it} (epoch {engine.state.epoch}, batch {(it - 1) % length + 1} of {length})"
        return (
            f"{where} of the {self.stage} stage: the loss is {kind(terms['loss'])}: "
            f"{self.diagnose(engine, forward, terms)}; the run stopped before this step's update and checkpoint"
        )

    # -- the iteration ----------------------------------------------------------------------------------------------
    def __call__(self, engine: SupervisedTrainer, batchdata: Any) -> dict[str, Any]:
        lr = float(engine.optimizer.param_groups[0]["lr"])
        if batchdata is None:  # every sample of the batch was unreadable and skipped (dataset.skip_bad)
            engine.state.output = {"skipped_batch": True, "images": 0, "lr": lr}
            return engine.state.output
        output: dict[str, Any] = {}
        engine.state.output = output
        self.train_mode(engine)
        engine.optimizer.zero_grad(set_to_none=True)
        with self.amp.autocast():
            forward = self.forward(engine, batchdata)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        terms = self.compute_loss(engine, forward)
        loss = terms["loss"]
        if not is_finite(loss):  # one device sync per step: a NaN must never reach the weights or a checkpoint
            raise TrainingDiverged(self.divergence(engine, forward, terms))
        output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        backward(loss, self.amp)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        output["lr"] = lr
        optimizer_step(engine.optimizer, self.amp)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        output["terms"] = {name: value.detach() for name, value in terms.items()}
        output["images"] = self.batch_images(batchdata) * self.world_size
        return output


def _trained(engine: Any, _event: int) -> bool:
    return not (engine.state.output or {}).get("skipped_batch")


class IterationLrSchedule(LrScheduleHandler):
    """MONAI's ``LrScheduleHandler`` stepping the schedule after every iteration that trained (a batch emptied by
    ``dataset.skip_bad`` trains nothing and does not advance it)."""

    def __init__(self, scheduler: Any) -> None:
        super().__init__(scheduler, print_lr=False, epoch_level=False)

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=_trained), self)


def _not_a_termination_report(record: logging.LogRecord) -> bool:
    """Drop ignite's "Engine run is terminating due to exception: ..." line: the exception itself reaches the caller,
    which reports it once (a one-line error, or the interrupted line of a Ctrl-C)."""
    return "is terminating due to exception" not in record.getMessage()


def make_trainer(
    step: TrainStep,
    *,
    device: torch.device,
    max_epochs: int,
    loader: Any,
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_function: Any,
    handlers: list[Any],
) -> SupervisedTrainer:
    """A stock SupervisedTrainer running ``step`` each iteration, with ``handlers`` attached in order."""
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=max_epochs,
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=loss_function,
        iteration_update=step,
        train_handlers=handlers,
        amp=False,  # our own AMP: bf16/fp16 choice and a float32 region for the mixture math
        decollate=False,
        optim_set_to_none=True,
    )
    return quiet_termination(trainer)


def quiet_termination(engine: Any) -> Any:
    """``engine`` without ignite's "Engine run is terminating due to exception" line (the caller reports the error
    once, in one line); returns the engine."""
    if _not_a_termination_report not in engine.logger.filters:
        engine.logger.addFilter(_not_a_termination_report)
    return engine
