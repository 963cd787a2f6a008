"""Process group set-up for ``torchrun`` (DDP), devices, and rank-0-only helpers.

``torchrun --nproc_per_node=K -m probmcl_med.cli train ...`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
:func:`setup_distributed` then initialises the default process group from those variables (NCCL on CUDA, gloo on
CPU) and pins each rank to its GPU. A plain ``python`` run is a world of one and touches nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from probmcl_med.devices import resolve_device


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank, world size, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the only rank that logs, prints and writes files)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_name: str = "auto") -> DistContext:
    """Initialise DDP from torchrun's environment when ``WORLD_SIZE > 1``; otherwise a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def cleanup_distributed() -> None:
    """Destroy the process group if this process created one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.distributed and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over ranks (a copy; no-op in a single process)."""
    out = value.detach().clone()
    if ctx.distributed and dist.is_initialized():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out
