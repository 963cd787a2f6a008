"""The per-iteration learning-rate schedules of ``lr_schedule`` against their closed forms, and end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from probmcl_med.engine.schedule import lr_scheduler

STEPS = 20


def trajectory(kind: str, lrs: list[float]) -> list[list[float]]:
    """The lr of every parameter group at each of STEPS optimiser steps."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    optimizer = torch.optim.Adam(groups)
    scheduler = lr_scheduler(kind, optimizer, lrs, STEPS)
    seen = []
    for _ in range(STEPS):
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


def test_onecycle_warms_up_for_a_fifth_then_anneals_far_below_the_peak() -> None:
    seen = [row[0] for row in trajectory("onecycle", [1e-3])]
    peak = max(range(STEPS), key=lambda t: seen[t])
    assert peak == round(0.2 * STEPS) - 1 and seen[peak] == pytest.approx(1e-3)
    assert seen[0] == pytest.approx(1e-3 / 25) and seen[-1] < 1e-4


def test_the_configured_schedule_reaches_training(tmp_path) -> None:
    from test_train import tiny_config

    from probmcl_med.engine.run import train

    config = tiny_config(tmp_path, "mode=asl", "epochs=2", "lr_schedule=constant", "classifier.augment=false")
    train(config)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records] == [config.classifier.lr] * 2
    with pytest.raises(ValueError, match="lr_schedule 'linear'"):
        trajectory("linear", [1e-3])
