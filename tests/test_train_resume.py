"""Crash safety: SIGKILL a real training process mid-epoch, resume it, and end with the uninterrupted run's weights."""

from __future__ import annotations

import os
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


@pytest.mark.parametrize("damage", ["truncate"])
def test_resume_falls_back_past_a_damaged_checkpoint(tmp_path, damage):
    env = _env(tmp_path)
    run = tmp_path / "run"
    first = subprocess.run(
        _command(run, "--stage", "contrastive", "--set", "contrastive.epochs=1"),
        env=env,
        capture_output=True,
        text=True,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    manager = CheckpointManager(run / "checkpoints")
    newest = manager.list()[-1].path
    newest.write_bytes(newest.read_bytes()[:500])
    again = subprocess.run(
        _command(run, "--stage", "contrastive", "--set", "contrastive.epochs=1", "--resume"),
        env=env,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"checkpoint {newest} is corrupt or truncated" in again.stderr and "falling back" in again.stderr
    # the resumed run redid the last iteration and rewrote the damaged file with a complete one
    assert read_checkpoint(newest)["complete"] is True
