"""Readers (info, evaluate, predict) keep working on a run folder that is being trained and see only complete files;
writers into it (evaluate --tune-thresholds --save, a sweep into a locked folder) are refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_inference import cli, make_csv_dataset, write_images
from test_train_refusals import SETS


def _error_lines(capsys: pytest.CaptureFixture[str]) -> tuple[list[str], str]:
    captured = capsys.readouterr()
    return [line for line in captured.err.splitlines() if line.startswith("error:")], captured.out


def test_readers_during_a_real_training_run(tmp_path: Path, capsys) -> None:
    """A real training process (long enough not to end by itself) checkpointing every iteration; while it runs,
    info, evaluate and predict succeed twice each on complete files, tuning thresholds without --save too, and
    --tune-thresholds --save is refused naming it.
    Then it is killed with SIGKILL: the lock dies with it, and tuning the thresholds works."""
    make_csv_dataset(tmp_path / "data", n_per_split=8)
    write_images(tmp_path / "imgs", 2)
    run = tmp_path / "run"
    sets = [*SETS, f"dataset.root={tmp_path / 'data'}", "classifier.epochs=5000", "checkpoint.every_n_iterations=1"]
    command = [sys.executable, "-m", "probmcl_med.cli", "train", "--output-dir", str(run)]
    command += [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    trainer = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    readers = {
        "info": ["info", "-c", str(run), "--json"],
        "evaluate": ["evaluate", "-c", str(run), "--split", "test", "--json", "--device", "cpu"],
        "predict": ["predict", str(tmp_path / "imgs"), "-c", str(run), "--out", str(tmp_path / "out"), "--device",
                    "cpu"],
    }  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (run / "model.pt").is_file():
            assert trainer.poll() is None and time.monotonic() < deadline, trainer.communicate()[1]
            time.sleep(0.2)
        tune = ["evaluate", "-c", str(run), "--tune-thresholds", "recall=0.9", "--device", "cpu"]
        code = cli([*tune, "--save"])
        errors, _ = _error_lines(capsys)
        assert code == 1 and len(errors) == 1 and f"train process {trainer.pid} " in errors[0]
        assert not (run / "thresholds.json").exists()
        readers["tune without --save"] = tune  # writes nothing: a reader
        for _ in range(2):
            for name, args in readers.items():
                assert cli(args) == 0, (name, capsys.readouterr().err)
                errors, out = _error_lines(capsys)
                assert not errors
                if name in ("info", "evaluate"):
                    json.loads(out)  # a complete document from a complete model.pt
        assert trainer.poll() is None, "the training ended before the readers were done"
    finally:
        trainer.kill()
        trainer.communicate()
    assert cli([*tune, "--save"]) == 0
    assert (run / "thresholds.json").is_file()


def test_a_sweep_into_a_folder_in_use_is_refused_before_training(tmp_path: Path, capsys) -> None:
    from probmcl_med.runlock import RunLock

    out = tmp_path / "sweep"
    with RunLock(out, "sweep"):
        before = sorted(p.name for p in out.iterdir())
        code = cli(["sweep", "--grid", "contrastive.tau=0.1,0.2", "--seeds", "1", "--out", str(out), "--set",
                    "encoder.name=test_resnet", "--set", "mode=two-stage"])  # fmt: skip
        errors, _ = _error_lines(capsys)
        assert code == 1 and len(errors) == 1 and f"sweep process {os.getpid()} " in errors[0]
        assert sorted(p.name for p in out.iterdir()) == before
