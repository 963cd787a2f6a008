"""Mixed precision: bf16 autocast where the GPU supports it, else fp16 with a GradScaler; nothing on CPU.

Only the encoder runs under autocast. The MDN, the mixture math and the losses run in float32 (docs/math.md: never
fp16/bf16), which :class:`~probmcl_med.engine.contrastive.ContrastiveModel` enforces by leaving autocast around them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class AmpSettings:
    """The autocast dtype (None: full precision) and the GradScaler (fp16 only)."""

    device_type: str
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None

    def autocast(self) -> Any:
        """A context manager: autocast to ``dtype``, or nothing."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    @property
    def name(self) -> str:
        return "off" if self.dtype is None else str(self.dtype).removeprefix("torch.")


def amp_settings(device: torch.device, enabled: bool) -> AmpSettings:
    """bf16 on GPUs that support it, fp16 + GradScaler on older GPUs, off on CPU or when disabled."""
    if not enabled or device.type != "cuda":
        return AmpSettings(device.type, None, None)
    if torch.cuda.is_bf16_supported():
        return AmpSettings("cuda", torch.bfloat16, None)
    return AmpSettings("cuda", torch.float16, torch.amp.GradScaler("cuda"))


def no_autocast(device_type: str) -> Any:
    """Leave autocast for a float32 region (the mixture math)."""
    return torch.autocast(device_type, enabled=False)


def backward(loss: torch.Tensor, amp: AmpSettings) -> None:
    """``loss.backward()``, through the GradScaler when fp16 needs one."""
    if amp.scaler is not None:
        amp.scaler.scale(loss).backward()
    else:
        loss.backward()


def optimizer_step(optimizer: torch.optim.Optimizer, amp: AmpSettings) -> None:
    """Step the optimiser (unscaling and updating the GradScaler under fp16)."""
    if amp.scaler is not None:
        amp.scaler.step(optimizer)
        amp.scaler.update()
    else:
        optimizer.step()
