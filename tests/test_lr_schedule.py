"""The per-iteration learning-rate schedules of ``lr_schedule`` against their closed forms, and end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from probmcl_med.engine.schedule import lr_scheduler

STEPS = 20


def trajectory(kind: str, lrs: list[float], steps: int = STEPS) -> list[list[float]]:
    """The lr of every parameter group at each of ``steps`` optimiser steps."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    optimizer = torch.optim.Adam(groups)
    scheduler = lr_scheduler(kind, optimizer, lrs, steps)
    seen = []
    for _ in range(steps):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return seen


def test_constant_keeps_each_groups_lr() -> None:
    assert trajectory("constant", [1e-3, 3e-4]) == [[1e-3, 3e-4]] * STEPS


def test_cosine_anneals_from_the_lr_to_zero_without_warm_up() -> None:
    seen = trajectory("cosine", [1e-3, 3e-4])
    for t, row in enumerate(seen):
        for lr, base in zip(row, [1e-3, 3e-4], strict=True):
            assert lr == pytest.approx(base * (1 + math.cos(math.pi * t / STEPS)) / 2, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("steps", [1, 2, 20, 137])
def test_warmup_cosine_matches_timms_cosine_scheduler_with_warmup(steps: int) -> None:
    """Every iteration's lr of every group equals timm's CosineLRScheduler stepped per update (an independent code)."""
    from timm.scheduler import CosineLRScheduler

    from probmcl_med.engine.schedule import WARMUP_FRACTION

    lrs = [1e-3, 3e-4]
    warmup = min(round(WARMUP_FRACTION * steps), steps - 1)
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    optimizer = torch.optim.Adam(groups)
    reference = CosineLRScheduler(
        optimizer,
        t_initial=steps - warmup,
        lr_min=0.0,
        warmup_t=warmup,
        warmup_lr_init=0.0,
        warmup_prefix=True,
        t_in_epochs=False,
    )
    expected = []
    for t in range(steps):
        reference.step_update(t)
        expected.append([g["lr"] for g in optimizer.param_groups])
    ours = trajectory("warmup-cosine", lrs, steps)
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-18)
    assert ours[0] == ([0.0, 0.0] if warmup else lrs)
    assert max(range(steps), key=lambda t: ours[t][0]) == warmup  # the peak, at the end of the warm-up
    if steps >= 20:
        assert ours[-1][0] < 1e-2 * lrs[0]  # decayed to under 1 % of the peak


def test_warmup_cosine_resumes_exactly_from_a_state_dict() -> None:
    """A scheduler rebuilt from a checkpoint's state continues with the uninterrupted trajectory."""
    full = trajectory("warmup-cosine", [1e-3], STEPS)
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1e-3}]
    optimizer = torch.optim.Adam(groups)
    scheduler = lr_scheduler("warmup-cosine", optimizer, [1e-3], STEPS)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    state_o, state_s = optimizer.state_dict(), scheduler.state_dict()
    optimizer2 = torch.optim.Adam([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1e-3}])
    scheduler2 = lr_scheduler("warmup-cosine", optimizer2, [1e-3], STEPS)
    optimizer2.load_state_dict(state_o)
    scheduler2.load_state_dict(state_s)
    rest = []
    for _ in range(7, STEPS):
        rest.append([g["lr"] for g in optimizer2.param_groups])
        optimizer2.step()
        scheduler2.step()
    assert rest == full[7:]


def test_onecycle_warms_up_for_a_fifth_then_anneals_far_below_the_peak() -> None:
    seen = [row[0] for row in trajectory("onecycle", [1e-3])]
    peak = max(range(STEPS), key=lambda t: seen[t])
    assert peak == round(0.2 * STEPS) - 1 and seen[peak] == pytest.approx(1e-3)
    assert seen[0] == pytest.approx(1e-3 / 25) and seen[-1] < 1e-4


@pytest.mark.parametrize("steps", range(1, 41))
def test_onecycle_runs_at_any_length(steps: int) -> None:
    """A stage of any length gets a usable OneCycle: torch's own divides by zero when its warm-up ends at step 0
    (5 steps at pct_start 0.2: a 1-epoch run of 160 images in batches of 32)."""
    seen = [row[0] for row in trajectory("onecycle", [1e-3], steps)]
    assert all(math.isfinite(lr) and 0 < lr <= 1e-3 * (1 + 1e-12) for lr in seen)
    if steps >= 2:
        assert seen[0] == pytest.approx(1e-3 / 25)  # OneCycle's start: max_lr / div_factor
    if steps >= 4:
        assert seen[-1] < 1e-4  # annealed far below the peak by the last step


def test_the_configured_schedule_reaches_training(tmp_path) -> None:
    from test_train import tiny_config

    from probmcl_med.engine.run import train

    config = tiny_config(tmp_path, "mode=asl", "epochs=2", "lr_schedule=constant", "classifier.augment=false")
    train(config)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records] == [config.classifier.lr] * 2
    with pytest.raises(ValueError, match="lr_schedule 'linear'"):
        trajectory("linear", [1e-3])
