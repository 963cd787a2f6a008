"""The learning rate over a stage (``lr_schedule``), stepped per iteration, and what a resume may do with it.

:func:`lr_scheduler` is the one place a stage's schedule is built. :func:`continue_schedule` is ``--resume
--extend``: it continues a stage under a schedule of another length only where the resumed run then equals a fresh
run of the new length, step for step; it finds out by building both schedules and comparing every learning rate and
momentum the steps done so far used (so it holds for any schedule :func:`lr_scheduler` builds). A constant rate
always continues; OneCycle, cosine and warmup-cosine depend on the length from their first steps, so they are refused.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from probmcl_med.errors import ConfigError

ONE_CYCLE_PCT_START = 0.2
WARMUP_FRACTION = 0.05
"""``warmup-cosine``: the share of a stage's iterations spent warming up linearly from 0 (rounded, at most T - 1)."""
SCHEDULES = ("warmup-cosine", "onecycle", "cosine", "constant")


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """The lr multiplier of ``warmup-cosine`` at iteration ``step`` (0-based) of ``total_steps``.

    ``step / W`` for the first ``W = warmup_steps`` iterations (a linear warm-up from 0), then one half cosine over the
    remaining ``T - W``: ``(1 + cos(pi (step - W) / (T - W))) / 2``, from 1 down towards 0 (reached one step after
    the last). The same values as timm's ``CosineLRScheduler(t_initial=T - W, warmup_t=W, warmup_lr_init=0,
    warmup_prefix=True, lr_min=0)`` stepped per update (tests/test_lr_schedule.py).
    """
    if step < warmup_steps:
        return step / warmup_steps
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))


def lr_scheduler(kind: str, optimizer: torch.optim.Optimizer, max_lrs: list[float], total_steps: int) -> Any:
    """The per-iteration learning-rate schedule of a stage (``lr_schedule``), over ``total_steps`` iterations.

    - ``warmup-cosine``: a linear warm-up from 0 over the first 5 % of the steps (:data:`WARMUP_FRACTION`), then a
      cosine decay to 0 (:func:`warmup_cosine_factor`; a ``LambdaLR``, so it checkpoints and resumes exactly);
    - ``onecycle``: ``OneCycleLR`` peaking at ``max_lrs`` after 20 % of the steps (``pct_start`` of the ASL training
      script; it also cycles Adam's beta1 between 0.85 and 0.95); stages of fewer than 8 steps warm up over 1.5 steps
      (at most 75 %), since torch's phases collapse when the warm-up ends at step 0;
    - ``cosine``: ``max_lr * (1 + cos(pi t / T)) / 2`` from the first step, no warm-up;
    - ``constant``: ``max_lrs`` throughout.
    """
    steps = max(1, total_steps)
    if kind == "warmup-cosine":
        warmup = min(round(WARMUP_FRACTION * steps), steps - 1)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: warmup_cosine_factor(t, steps, warmup))
    if kind == "onecycle":
        # torch's warm-up phase ends at step pct_start * T - 1; at exactly 0 (T = 5 for 0.2) its interpolation
        # divides by zero, so short stages warm up over at least 1.5 steps (T >= 8 keep the 20 %).
        pct_start = min(0.75, max(ONE_CYCLE_PCT_START, 1.5 / steps))
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lrs, total_steps=steps, pct_start=pct_start)
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
