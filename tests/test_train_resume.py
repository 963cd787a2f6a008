"""Crash safety: a run stopped mid-epoch and resumed ends with the uninterrupted run's weights, every tensor equal.

The fast tests stop the run in-process (the checkpoints after a mid-epoch iteration removed, as a kill leaves the
folder) and resume it in the same process; the slow test SIGKILLs a real training process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from probmcl_med.engine.checkpoint import CheckpointManager, read_checkpoint

# The real entry point: probmcl_med.cli.main.main(), with `train` registered if the lead's main has not done so yet.
ENTRY = """
import sys
from probmcl_med.cli import main as m
m._register_commands()
if "train" not in [c.name for c in m.app.registered_commands]:
    from probmcl_med.cli.train import register
    register(m.app)
sys.exit(m.main(sys.argv[1:]))
"""

SETTINGS = [
    "mode=two-stage",
    "encoder.name=test_resnet",
    "dataset.name=demo",
    "dataset.image_size=32",
    "dataset.options={n_train: 32, n_valid: 8, n_test: 8}",
    "dataset.augment.num_ops=1",
    "contrastive.epochs=2",
    "contrastive.batch_size=4",  # 8 iterations per epoch
    "contrastive.mdn_hidden=[32, 16]",
    "contrastive.lr=0.001",
    "classifier.epochs=2",
    "classifier.batch_size=8",
    "classifier.lr=0.01",
    "classifier.augment=true",  # stage 2 also draws augmentations (through the per-sample seeds)
    "checkpoint.every_n_iterations=1",
    "checkpoint.keep_last=3",
    "deterministic=true",
    "workers=0",
    "seed=7",
]


def _command(output_dir: Path, *extra: str) -> list[str]:
    args = [sys.executable, "-c", ENTRY, "train", "--output-dir", str(output_dir)]
    for s in SETTINGS:
        args += ["--set", s]
    return [*args, *extra]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PROBMCL_MED_NO_PROGRESS="1",
        OMP_NUM_THREADS="1",
        PROBMCL_MED_CACHE=os.environ.get("PROBMCL_MED_CACHE", str(tmp_path / "cache")),
        HF_HUB_OFFLINE="1",
    )
    return env


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    raw = torch.load(run / "model.pt", weights_only=True)
    out = {f"encoder.{k}": v for k, v in raw["encoder"]["state_dict"].items()}
    out.update({f"head.{k}": v for k, v in raw["head"]["state_dict"].items()})
    out.update({f"mdn.{k}": v for k, v in raw["mdn"]["state_dict"].items()})
    return out


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    env = _env(tmp_path)
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    done = subprocess.run(_command(straight), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    proc = subprocess.Popen(_command(crashed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manager = CheckpointManager(crashed / "checkpoints")
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            # a mid-epoch checkpoint of the second contrastive epoch (iterations 9..16; 11 is mid-epoch)
            if any(c.stage == "contrastive" and c.iteration >= 11 for c in manager.list()):
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    latest = manager.list()[-1]
    state = read_checkpoint(latest.path)
    assert state["stage"] == "contrastive" and 0 < state["epoch_iteration"] < state["epoch_length"], latest.path.name
    assert not (crashed / "model.pt").exists()

    resumed = subprocess.run(_command(crashed, "--resume"), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr
    # it continued inside epoch 2 (epoch 1 is not redone) rather than silently starting over
    assert "contrastive epoch 1/2" not in resumed.stderr and "contrastive epoch 2/2" in resumed.stderr

    expected, got = _final_weights(straight), _final_weights(crashed)
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    # one metrics line per epoch and stage, as in the uninterrupted run
    lines = lambda p: [line.split('"images_per_s"')[0] for line in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert len(lines(crashed)) == len(lines(straight)) == 4


FAST = ["mode=two-stage", "encoder.name=test_resnet", "dataset.name=demo", "dataset.image_size=16",
        "dataset.options={n_train: 16, n_valid: 8, n_test: 8}", "dataset.augment.num_ops=1", "contrastive.epochs=2",
        "contrastive.batch_size=4", "contrastive.mdn_hidden=[16, 8]", "contrastive.lr=0.001", "classifier.epochs=2",
        "classifier.batch_size=8", "classifier.lr=0.01", "classifier.augment=true", "checkpoint.every_n_iterations=1",
        "checkpoint.keep_last=50", "deterministic=true", "workers=0", "amp=false", "seed=7"]  # fmt: skip
"""Four contrastive iterations per epoch, two classifier ones; a checkpoint after every iteration."""


def _fast_args(run: Path, *extra: str) -> list[str]:
    return ["train", *(a for s in FAST for a in ("--set", s)), "--output-dir", str(run), *extra]


def _stop_after(run: Path, iteration: int, stage: str) -> None:
    """The folder as a kill after ``iteration`` of ``stage`` leaves it: no later checkpoint, no model, the metric
    lines of the epochs done (what the crashed process had written by then)."""
    for c in CheckpointManager(run / "checkpoints").list():
        if c.stage_index > (0 if stage == "contrastive" else 1) or (c.stage == stage and c.iteration > iteration):
            c.path.unlink()
    (run / "model.pt").unlink(missing_ok=True)
    done = read_checkpoint(CheckpointManager(run / "checkpoints").list()[-1].path)["epoch"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    order = ["contrastive", "classifier"]

    def before(record: dict) -> bool:
        position = order.index(record["stage"]) - order.index(stage)
        return position < 0 or (position == 0 and record["epoch"] <= done)

    kept = [line for line in lines if before(json.loads(line))]
    (run / "metrics.jsonl").write_text("".join(f"{line}\n" for line in kept))


@pytest.mark.parametrize(("stage", "iteration"), [("contrastive", 6), ("classifier", 1)])
def test_resume_mid_epoch_matches_uninterrupted_run(tmp_path, capsys, stage, iteration):
    """Stopped mid-epoch (epoch 2 of the contrastive stage, or inside the augmented classifier stage) and resumed:
    every tensor of the final model equals the uninterrupted run's, and metrics.jsonl has one line per epoch."""
    from test_inference import cli

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert cli(_fast_args(straight)) == 0
    shutil.copytree(straight, stopped)
    _stop_after(stopped, iteration, stage)
    latest = read_checkpoint(CheckpointManager(stopped / "checkpoints").list()[-1].path)
    assert latest["stage"] == stage and 0 < latest["epoch_iteration"] < latest["epoch_length"]
    capsys.readouterr()
    assert cli(_fast_args(stopped, "--resume")) == 0
    assert "resuming from" in capsys.readouterr().err
    expected, got = _final_weights(straight), _final_weights(stopped)
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    lines = lambda p: [line.split('"images_per_s"')[0] for line in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert lines(stopped) == lines(straight) and len(lines(straight)) == 4


def test_resume_falls_back_past_a_damaged_checkpoint(tmp_path, capsys):
    from test_inference import cli

    run = tmp_path / "run"
    args = _fast_args(run, "--stage", "contrastive", "--set", "contrastive.epochs=1")
    assert cli(args) == 0
    newest = CheckpointManager(run / "checkpoints").list()[-1].path
    newest.write_bytes(newest.read_bytes()[:500])
    capsys.readouterr()
    assert cli([*args, "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {newest} is corrupt or truncated" in err and "falling back" in err
    # the resumed run redid the last iteration and rewrote the damaged file with a complete one
    assert read_checkpoint(newest)["complete"] is True
