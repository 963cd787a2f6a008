"""The learning rate over a stage (``lr_schedule``), stepped per iteration, and what a resume may do with it.

:func:`lr_scheduler` is the one place a stage's schedule is built. :func:`continue_schedule` is ``--resume
--extend``: it continues a stage under a schedule of another length only where the resumed run then equals a fresh
run of the new length, step for step; it finds out by building both schedules and comparing every learning rate and
momentum the steps done so far used (so it holds for any schedule :func:`lr_scheduler` builds). A constant rate
always continues; OneCycle and cosine depend on the length from their first step, so they are refused.
"""

from __future__ import annotations

from typing import Any

import torch

from probmcl_med.errors import ConfigError

ONE_CYCLE_PCT_START = 0.2
SCHEDULES = ("onecycle", "cosine", "constant")


def lr_scheduler(kind: str, optimizer: torch.optim.Optimizer, max_lrs: list[float], total_steps: int) -> Any:
    """The per-iteration learning-rate schedule of a stage (``lr_schedule``), over ``total_steps`` iterations.

    - ``onecycle``: ``OneCycleLR`` peaking at ``max_lrs`` after 20 % of the steps (``pct_start`` of the ASL training
      script; it also cycles Adam's beta1 between 0.85 and 0.95);
    - ``cosine``: ``max_lr * (1 + cos(pi t / T)) / 2`` from the first step, no warm-up;
    - ``constant``: ``max_lrs`` throughout.
    """
    steps = max(1, total_steps)
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=max_lrs, total_steps=steps, pct_start=ONE_CYCLE_PCT_START
        )
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=0.0)
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise ValueError(f"lr_schedule {kind!r}: use {', '.join(SCHEDULES)}")


def _hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Every group's settings but its parameters (lr, betas or momentum, and what the schedule keeps there)."""
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def _trajectory(kind: str, max_lrs: list[float], total_steps: int, steps: int) -> tuple[list[Any], Any]:
    """(the groups' settings before each of ``steps`` steps and after the last, the scheduler after them)."""
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in max_lrs]
    optimizer = torch.optim.Adam(groups)
    scheduler = lr_scheduler(kind, optimizer, list(max_lrs), total_steps)
    seen = [_hyperparameters(optimizer)]
    for _ in range(steps):
        optimizer.step()  # no gradients: nothing moves, but the scheduler's step order is the real one
        scheduler.step()
        seen.append(_hyperparameters(optimizer))
    return seen, scheduler


def continue_schedule(
    kind: str,
    scheduler: Any,
    max_lrs: list[float],
    steps_done: int,
    total_steps: int,
    old_total_steps: int,
    what: str,
) -> None:
    """``--extend``: continue, after ``steps_done`` steps of a schedule over ``old_total_steps``, as a fresh run over
    ``total_steps`` would: ``scheduler`` (built for ``total_steps`` on the optimiser loaded from the checkpoint) is
    set to that run's state.

    Raises:
        ConfigError: the two schedules differ in a step already taken: no resumed run can equal a fresh one of the
            new length (``what`` names the stage and its lengths in the message).
    """
    if steps_done > total_steps:
        raise ConfigError(
            f"--extend: {what}: {steps_done} iterations are done, more than the {total_steps} of the new length; "
            "give a length of at least what was trained"
        )
    new, fresh_scheduler = _trajectory(kind, max_lrs, total_steps, steps_done)
    old, _ = _trajectory(kind, max_lrs, old_total_steps, steps_done)
    differs = next((step for step, (a, b) in enumerate(zip(old, new, strict=True)) if a != b), None)
    if differs is not None:
        raise ConfigError(
            f"--extend: {what}: lr_schedule {kind} gives step {differs} another learning rate in a run of the new "
            f"length, so the {steps_done} steps done cannot continue as that run; finish it at its length, or train "
            "the new length from the start (another --output-dir)"
        )
    # every step so far used the same settings under both lengths, so the optimiser loaded from the checkpoint already
    # holds the new run's; only the scheduler's own state (its length) changes
    scheduler.load_state_dict(fresh_scheduler.state_dict())
