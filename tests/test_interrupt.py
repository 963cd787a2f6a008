"""Ctrl-C during training prints one line (interrupted, the last checkpoint, the command that continues) and exits
with 130; that command resumes from that checkpoint.

The fast test raises a real SIGINT inside the CLI's own process, right after its first checkpoint is written; the slow
tests send it to a separate ``probmcl-med train`` process.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from probmcl_med.engine.checkpoint import STATE_FORMAT, CheckpointManager
from probmcl_med.engine.checkpoint import read_checkpoint as read_state

ARGS = [
    "train",
    "--dataset",
    "demo",
    "--output-dir",
    "run",
    "--set",
    "encoder.name=test_resnet",
    "--set",
    "dataset.image_size=16",
    "--set",
    "dataset.options={n_train: 32, n_valid: 8, n_test: 8}",
    "--set",
    "dataset.augment.num_ops=1",
    "--set",
    "contrastive.batch_size=4",
    "--set",
    "contrastive.mdn_hidden=[16, 8]",
    "--set",
    "classifier.epochs=1",
    "--set",
    "checkpoint.every_n_iterations=1",
    "--set",
    "workers=0",
    "--set",
    "amp=false",
]


def _env() -> dict[str, str]:
    return {**os.environ, "PROBMCL_MED_NO_PROGRESS": "1"}


def _interrupt(cwd: Path, epochs: int) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Start training, send SIGINT once the first mid-epoch checkpoint exists, return the finished process."""
    args = [*ARGS, "--root", str(cwd / "demo"), "--set", f"contrastive.epochs={epochs}"]
    process = subprocess.Popen(
        [sys.executable, "-m", "probmcl_med.cli", *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not list((cwd / "run" / "checkpoints").glob("*.pt")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err), args


def _last_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    return lines[-1]


@pytest.mark.slow
def test_ctrl_c_prints_one_line_with_the_checkpoint_and_the_resume_command(tmp_path: Path) -> None:
    result, args = _interrupt(tmp_path, epochs=50)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr and "terminating due to exception" not in result.stderr
    line = _last_line(result.stderr)
    assert line.startswith("interrupted: last checkpoint ")
    checkpoint = Path(line.removeprefix("interrupted: last checkpoint ").split(" (", 1)[0])
    newest = CheckpointManager(tmp_path / "run" / "checkpoints").list()[-1].path
    assert (tmp_path / checkpoint).resolve() == newest.resolve()
    assert read_state(newest, expected_format=STATE_FORMAT)["stage"] == "contrastive"
    command = shlex.split(line.split("; continue with: ", 1)[1])
    assert command == ["probmcl-med", *args, "--resume"]
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.slow
def test_the_printed_command_continues_from_that_checkpoint(tmp_path: Path) -> None:
    result, _ = _interrupt(tmp_path, epochs=3)
    assert result.returncode == 130, result.stderr
    line = _last_line(result.stderr)
    checkpoint = line.removeprefix("interrupted: last checkpoint ").split(" (", 1)[0]
    command = shlex.split(line.split("; continue with: ", 1)[1])
    resumed = subprocess.run(
        [sys.executable, "-m", "probmcl_med.cli", *command[1:]],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {checkpoint}" in resumed.stderr
    assert (tmp_path / "run" / "model.pt").is_file()


def test_a_sigint_in_the_cli_process_stops_after_a_checkpoint_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from probmcl_med.cli.main import main

    saved: list[Path] = []
    save = CheckpointManager.save

    def save_then_ctrl_c(self, state, **where):  # the user presses Ctrl-C once the first checkpoint is on disk
        saved.append(save(self, state, **where))
        if len(saved) == 1:
            signal.raise_signal(signal.SIGINT)
        return saved[-1]

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(CheckpointManager, "save", save_then_ctrl_c)
    args = [*ARGS, "--root", str(tmp_path / "demo"), "--set", "contrastive.epochs=1", "--set",
            "dataset.options={n_train: 8, n_valid: 4, n_test: 4}"]  # fmt: skip
    capsys.readouterr()
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "terminating due to exception" not in err
    line = _last_line(err)
    assert line.startswith(f"interrupted: last checkpoint {Path('run') / 'checkpoints' / saved[0].name} ")
    command = shlex.split(line.split("; continue with: ", 1)[1])
    assert command == ["probmcl-med", *args, "--resume"]
    assert len(saved) == 1 and not (tmp_path / "run" / "model.pt").exists()
    assert main(command[1:]) == 0
    assert f"resuming from {Path('run') / 'checkpoints' / saved[0].name}" in capsys.readouterr().err
    assert (tmp_path / "run" / "model.pt").is_file()
