"""Model cost as the paper's Table 3 reports it: parameters (millions) and GMAC of one forward pass.

Counting rules (stated once, used by ``info`` and ``evaluate``):

- **Parameters** are every element of every parameter tensor, ``sum(p.numel() for p in model.parameters())``,
  shared tensors counted once (``nn.Module.parameters`` deduplicates them). Buffers (BatchNorm running statistics)
  are not parameters and are not counted.
- **FLOPs** are counted by PyTorch's own ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass of a
  batch of one image at the model's input size, in eval mode, without gradients. It counts the matrix products and
  convolutions (``mm``, ``addmm``, ``bmm``, ``convolution``, scaled-dot-product attention, ...) as 2 FLOPs per
  multiply-accumulate and ignores element-wise work (bias additions, activations, normalisation, pooling): a
  ``Linear(i, o)`` on ``B`` rows costs ``2 B i o`` FLOPs; a ``Conv2d`` costs ``2 B C_out H_out W_out (C_in / groups)
  k_h k_w``.
- **MACs = FLOPs / 2**, and **GMAC = MACs / 1e9** (the unit of the paper's Table 3, which, like fvcore/ptflops
  style counters, counts one multiply-accumulate per weight use and leaves element-wise operations out).

The inference model is the encoder plus the linear head (the MDN is a training-time module and is not part of it,
paper Sec. 3.3).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class ModelCost:
    """Parameters and compute of one forward pass.

    Attributes:
        params: number of parameters.
        flops: floating-point operations of one forward pass (2 per multiply-accumulate; see the module docstring).
        input_shape: the (B, C, H, W) shape the FLOPs were measured at.
    """

    params: int
    flops: int
    input_shape: tuple[int, ...]

    @property
    def macs(self) -> float:
        """Multiply-accumulates: FLOPs / 2."""
        return self.flops / 2.0

    @property
    def params_m(self) -> float:
        """Parameters in millions."""
        return self.params / 1e6

    @property
    def gmac(self) -> float:
        """Giga multiply-accumulates: MACs / 1e9."""
        return self.macs / 1e9

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: raw counts plus ``params_m`` and ``gmac``."""
        out = asdict(self)
        out["input_shape"] = list(self.input_shape)
        out["params_m"] = self.params_m
        out["gmac"] = self.gmac
        out["rule"] = "FLOPs by torch.utils.flop_counter.FlopCounterMode; MACs = FLOPs / 2; GMAC = MACs / 1e9"
        return out

    def describe(self) -> str:
        """One line, e.g. ``11.18 M parameters, 1.82 GMAC at 1x3x224x224``."""
        shape = "x".join(str(s) for s in self.input_shape)
        return f"{self.params_m:.2f} M parameters, {self.gmac:.3g} GMAC at {shape}"


def count_parameters(model: nn.Module) -> int:
    """``sum(p.numel() for p in model.parameters())`` (shared parameters once; buffers excluded)."""
    return int(sum(p.numel() for p in model.parameters()))


def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of ``model(example)`` counted by ``FlopCounterMode`` (eval mode, no gradients; mode restored after)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def model_cost(model: nn.Module, image_size: int | tuple[int, int], channels: int = 3) -> ModelCost:
    """Parameters and FLOPs of ``model`` on one ``channels x H x W`` image.

    Args:
        model: any module taking (B, C, H, W) images, e.g. ``ModelBundle.classifier()`` (encoder + head).
        image_size: input side in pixels, or (H, W).
        channels: input channels.

    Returns:
        A :class:`ModelCost` measured at batch size 1 on the model's device.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    example = torch.zeros(1, channels, int(h), int(w), device=device, dtype=dtype)
    return ModelCost(count_parameters(model), count_flops(model, example), tuple(example.shape))
