"""The shared MONAI trainer of both stages: one iteration that fires MONAI's IterationEvents around AMP steps.

:class:`StageTrainer` subclasses ``monai.engines.SupervisedTrainer`` and replaces ``_iteration`` with
``forward`` (under autocast) -> ``compute_loss`` (float32) -> backward -> optimiser step -> scheduler step, firing
``FORWARD_COMPLETED``, ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED`` and ``MODEL_COMPLETED`` like the stock trainer, so
stock MONAI/ignite handlers (StatsHandler, TensorBoardStatsHandler, ...) attach unchanged. The loss is stored under
``engine.state.output["loss"]`` (MONAI's ``Keys.LOSS``); the output also carries each loss term, the learning rate
and the number of images of the (global) batch. Subclasses: the contrastive stage (two views, encoder + MDN,
NLL + lambda * PCL) and the classifier stage (frozen encoder, linear head, ASL).
"""

from __future__ import annotations

from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch import nn

from probmcl_med.engine.amp import AmpSettings, backward, optimizer_step


class StageTrainer(SupervisedTrainer):
    """A SupervisedTrainer whose iteration is split into overridable ``forward`` and ``compute_loss``.

    Args:
        device: the device batches are moved to.
        max_epochs: epochs of this stage.
        train_data_loader: the stage's DataLoader.
        network: the module that is trained (possibly DDP-wrapped).
        optimizer: the optimiser.
        loss_function: called by ``compute_loss`` of the subclass.
        scheduler: an LR scheduler stepped once per iteration (OneCycleLR), or None.
        amp: autocast dtype and GradScaler (see :mod:`probmcl_med.engine.amp`).
        world_size: DDP world size (to report global images per batch).
        handlers: MONAI/ignite handlers, attached in order.
    """

    def __init__(
        self,
        *,
        device: torch.device,
        max_epochs: int,
        train_data_loader: Any,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Any,
        scheduler: Any = None,
        amp: AmpSettings,
        world_size: int = 1,
        handlers: list[Any] | None = None,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            train_handlers=handlers,
            amp=False,  # our own AMP: bf16/fp16 choice and a float32 region for the mixture math
            decollate=False,
            optim_set_to_none=True,
        )
        self.scheduler = scheduler
        self.amp_settings = amp
        self.world_size = world_size

    # -- hooks for the stages ----------------------------------------------------------------------------------------
    def train_mode(self) -> None:
        """Put the trained modules in train mode (the classifier stage keeps a frozen encoder in eval mode)."""
        self.network.train()

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover - abstract
        """Run the network on a batch under autocast; return what ``compute_loss`` needs."""
        raise NotImplementedError

    def compute_loss(self, forward: dict[str, Any]) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        """Float32 loss terms from the forward outputs: ``{"loss": total, other terms...}``."""
        raise NotImplementedError

    def batch_images(self, batch: dict[str, Any]) -> int:
        """Images (not views) in this rank's batch."""
        return int(batch["label"].shape[0])

    # -- the iteration ----------------------------------------------------------------------------------------------
    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _iteration(self, engine: Any, batchdata: Any) -> dict[str, Any]:
        if batchdata is None:  # every sample of the batch was unreadable and skipped (dataset.skip_bad)
            engine.state.output = {"skipped_batch": True, "images": 0, "lr": self.current_lr()}
            return engine.state.output
        output: dict[str, Any] = {}
        engine.state.output = output
        self.train_mode()
        self.optimizer.zero_grad(set_to_none=True)
        with self.amp_settings.autocast():
            forward = self.forward(batchdata)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        terms = self.compute_loss(forward)
        loss = terms["loss"]
        output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        backward(loss, self.amp_settings)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        output["lr"] = self.current_lr()
        optimizer_step(self.optimizer, self.amp_settings)
        if self.scheduler is not None:
            self.scheduler.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        for name, value in terms.items():
            output[name] = value.detach() if torch.is_tensor(value) else value
        output["images"] = self.batch_images(batchdata) * self.world_size
        return output
