"""CPU threads of the main process: torch's intra-op pool sized to the cores the DataLoader workers leave free.

torch starts one intra-op thread per core, and every DataLoader worker process needs a core too (torch runs one
thread in each worker). On a machine with few cores the two oversubscribe: on a busy 2-core machine with one loader
worker a resnet18 training step ran at 6.7 img/s with torch's default 2 threads against 31 img/s with 1 (issue 14;
``python benchmarks/bench_train.py --threads-sweep`` measures it here). So training, and evaluation and prediction
on the CPU, set ``cores left after the workers`` threads, at least 1, unless the ``threads`` config key says otherwise.
"""

from __future__ import annotations

import os

import torch


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def auto_threads(workers: int, cores: int | None = None, local_processes: int | None = None) -> int:
    """``max(1, cores // local_processes - workers)``: this process's share of the cores, minus its loader workers.

    Args:
        workers: DataLoader worker processes of this process.
        cores: cores available (default :func:`available_cores`).
        local_processes: training processes on this machine (default ``LOCAL_WORLD_SIZE``, set by torchrun, else 1).
    """
    cores = available_cores() if cores is None else cores
    if local_processes is None:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, cores // max(1, local_processes) - max(0, workers))


def configure_threads(threads: int | None, workers: int) -> int:
    """Set torch's intra-op threads to ``threads`` when it is positive, else to :func:`auto_threads` of ``workers``;
    returns the number set."""
    count = int(threads) if threads else auto_threads(workers)
    torch.set_num_threads(count)
    return count


__all__ = ["auto_threads", "available_cores", "configure_threads"]
