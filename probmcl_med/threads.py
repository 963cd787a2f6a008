"""CPU threads of the main process and DataLoader workers, chosen from what the data cost.

Workers: training images kept in memory, decoded and resized once (:mod:`probmcl_med.data.cache`), cost the main
process a few percent of a CPU training step (the flips and the normalisation of one 64-px image take microseconds
against milliseconds of resnet18), while a worker process takes a core from torch: on the CPU such data load in the
main process (``workers`` 0) unless the config sets ``workers``, and torch gets every core. Images that do not fit in
memory are decoded every epoch: ``workers`` processes (the config's, default 2) decode them beside the training. On a
GPU the configured workers run the augmentation beside it, cached or not (:func:`choose_workers`).

Threads: torch's intra-op pool sized to the cores the DataLoader workers leave free.

torch starts one intra-op thread per core, and every DataLoader worker process needs a core too (torch runs one
thread in each worker). On a machine with few cores the two oversubscribe: on a busy 2-core machine with one loader
worker a resnet18 training step ran at 6.7 img/s with torch's default 2 threads against 31 img/s with 1 (issue 14;
``python benchmarks/bench_train.py --threads-sweep`` measures it here). So training, and evaluation and prediction
on the CPU, set ``cores left after the workers`` threads, at least 1, unless the ``threads`` config key says otherwise.

``OMP_NUM_THREADS``, where set to a positive count, caps the threads the auto setting chooses: it is how a batch scheduler, a study that
runs several trainings side by side, or a user limits a process's threads, and torch itself honours it. The issue-25
study started each child with ``OMP_NUM_THREADS=1``, yet each set 2 intra-op threads: two fine-tunings side by side
on 2 cores ran at 17 img/s each, one alone at 248 img/s.
"""

from __future__ import annotations

import os

import torch


def thread_cap() -> int | None:
    """``OMP_NUM_THREADS`` as a positive count, or None where it is unset, empty or not a positive integer (OpenMP
    also accepts a comma list of counts per nesting level: its first applies)."""
    text = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def auto_threads(
    workers: int, cores: int | None = None, local_processes: int | None = None, *, capped: bool = True
) -> int:
    """``max(1, cores // local_processes - workers)``: this process's share of the cores, minus its loader workers,
    at most :func:`thread_cap` (``OMP_NUM_THREADS``) when ``capped`` (torch's threads; loader worker processes are
    counted uncapped).

    Args:
        workers: DataLoader worker processes of this process.
        cores: cores available (default :func:`available_cores`).
        local_processes: training processes on this machine (default ``LOCAL_WORLD_SIZE``, set by torchrun, else 1).
        capped: apply ``OMP_NUM_THREADS``.
    """
    cores = available_cores() if cores is None else cores
    if local_processes is None:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    share = max(1, cores // max(1, local_processes) - max(0, workers))
    cap = thread_cap() if capped else None
    return min(share, cap) if cap else share


def configure_threads(threads: int | None, workers: int) -> int:
    """Set torch's intra-op threads to ``threads`` when it is positive, else to :func:`auto_threads` of ``workers``;
    returns the number set."""
    count = int(threads) if threads else auto_threads(workers)
    torch.set_num_threads(count)
    return count


def choose_workers(configured: int, explicit: bool, in_memory: bool, device_type: str) -> int:
    """DataLoader worker processes of training (see the module docstring).

    Args:
        configured: the config's ``workers``.
        explicit: whether the config (its file or ``--set``) gave ``workers``; then it is used as given.
        in_memory: whether the training images are kept in memory, decoded and resized.
        device_type: ``cpu`` or ``cuda``.
    """
    if explicit:
        return int(configured)
    return 0 if in_memory and device_type == "cpu" else int(configured)


__all__ = ["auto_threads", "available_cores", "choose_workers", "configure_threads", "thread_cap"]
