"""Run under ``torchrun --nproc_per_node=K``: the DDP contrastive loss and gradients, written by rank 0 for the test.

Usage: ``python -m torch.distributed.run --nproc_per_node=2 tests/distributed_worker.py OUT.pt``. Each rank takes
its shard of a fixed global batch of views (the same seed everywhere), runs the engine's ContrastiveModel under
DistributedDataParallel with the engine's objective in gather mode, and calls backward; rank 0 saves the loss
terms averaged over ranks (the value a run reports) and the parameter gradients after DDP's averaging.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from tests_distributed_common import GLOBAL_VIEWS, build_model, global_batch, objective
from torch.nn.parallel import DistributedDataParallel

from probmcl_med.engine.distributed import all_reduce_sum, cleanup_distributed, setup_distributed


def main(out_path: str) -> None:
    torch.set_num_threads(1)
    ctx = setup_distributed("cpu")
    assert dist.get_backend() == "gloo" and ctx.world_size > 1
    model = build_model()
    ddp = DistributedDataParallel(model)
    x, y = global_batch()
    per_rank = GLOBAL_VIEWS // ctx.world_size
    shard = slice(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)
    h, mixture = ddp(x[shard])
    out = objective(distributed=True, model=model)(mixture, h, y[shard])
    out.total.backward()
    terms = torch.stack([out.total.detach(), out.nll.detach(), out.pcl.detach()])
    terms = all_reduce_sum(terms, ctx) / ctx.world_size
    if ctx.is_main:
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        torch.save({"total": terms[0], "nll": terms[1], "pcl": terms[2], "grads": grads}, out_path)
    cleanup_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
