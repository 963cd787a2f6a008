"""What a resume may change: everything that shaped the run so far must match (refused in one line, nothing written),
``--extend`` continues under another length only where the result equals a fresh run of that length (compared
tensor by tensor), and what a run folder records is what the run used."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from test_inference import cli
from test_train_refusals import snapshot

from probmcl_med.engine.checkpoint import CheckpointManager, read_checkpoint

ASL = ["mode=asl", "encoder.name=test_resnet", "dataset.name=demo", "dataset.image_size=16",
       "dataset.options={n_train: 16, n_valid: 8, n_test: 8}", "dataset.augment.num_ops=1",
       "classifier.batch_size=8", "classifier.lr=0.01", "checkpoint.every_n_iterations=1",
       "checkpoint.keep_last=20", "deterministic=true", "workers=0", "amp=false", "seed=3",
       "lr_schedule=constant"]  # fmt: skip
"""Two iterations per epoch; a checkpoint after every iteration."""


def train_args(run: Path, *extra: str, sets: list[str] = ASL) -> list[str]:
    return ["train", *(a for s in sets for a in ("--set", s)), "--output-dir", str(run), *extra]


def weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint's models, or of a bundle's encoder and head."""
    raw = torch.load(path, weights_only=True)
    if "models" in raw:
        return {f"{m}.{k}": v for m, state in raw["models"].items() if isinstance(state, dict)
                for k, v in state.items() if torch.is_tensor(v)}  # fmt: skip
    return {**{f"e.{k}": v for k, v in raw["encoder"]["state_dict"].items()},
            **{f"h.{k}": v for k, v in raw["head"]["state_dict"].items()}}  # fmt: skip


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def kill_after(run: Path, iteration: int) -> None:
    """What a kill -9 after ``iteration`` leaves: the checkpoints up to it (and the run files)."""
    for c in CheckpointManager(run / "checkpoints").list():
        if c.iteration > iteration:
            c.path.unlink()


def refused(args: list[str], run: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    before = snapshot(run)
    assert cli(args) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert snapshot(run) == before  # byte for byte, .lock and config.yaml included
    return lines[0]


@pytest.fixture(scope="module")
def constant_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished asl run of 2 epochs at a constant learning rate."""
    run = tmp_path_factory.mktemp("constant") / "run"
    assert cli(train_args(run, "--epochs", "2")) == 0
    return run


def test_a_changed_learning_rate_is_refused_and_nothing_is_recorded(constant_run: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoints", "config.yaml", "metrics.jsonl", "run.json", "class_names.json"):
        src = constant_run / name
        (run / name).write_bytes(src.read_bytes()) if src.is_file() else shutil.copytree(src, run / name)
    kill_after(run, 3)  # killed in epoch 2
    line = refused([*train_args(run, "--epochs", "2", "--resume"), "--set", "classifier.lr=0.5"], run, capsys)
    assert "classifier.lr is 0.5 but the run used 0.01" in line and "--output-dir" in line
    assert yaml.safe_load((run / "config.yaml").read_text())["classifier"]["lr"] == 0.01


def test_resume_without_the_runs_length_is_refused(constant_run: Path, tmp_path: Path, capsys) -> None:
    """The run was started with --epochs 2: a bare --resume (the default 120) does not silently extend it."""
    line = refused([*train_args(constant_run, "--resume")], constant_run, capsys)
    assert "epochs is 120 but the run used 2" in line and "--extend" in line


def test_a_finished_run_with_another_length_is_refused_not_nothing_left(constant_run: Path, capsys) -> None:
    line = refused(train_args(constant_run, "--epochs", "3", "--resume"), constant_run, capsys)
    assert "epochs is 3 but the run used 2" in line and "nothing left" not in line


def test_extend_a_constant_run_equals_a_fresh_run_of_the_new_length(constant_run: Path, tmp_path: Path, capsys) -> None:
    extended = tmp_path / "extended"
    shutil.copytree(constant_run, extended)
    capsys.readouterr()
    assert cli(train_args(extended, "--epochs", "3", "--resume", "--extend")) == 0, capsys.readouterr().err
    fresh = tmp_path / "fresh"
    assert cli(train_args(fresh, "--epochs", "3")) == 0
    last = lambda r: CheckpointManager(r / "checkpoints").list()[-1].path  # noqa: E731
    assert read_checkpoint(last(extended))["iteration"] == read_checkpoint(last(fresh))["iteration"] == 6
    assert same(weights(last(extended)), weights(last(fresh)))
    assert same(weights(extended / "model.pt"), weights(fresh / "model.pt"))
    # every record says 3 epochs: the run used them
    assert yaml.safe_load((extended / "config.yaml").read_text())["epochs"] == 3
    assert torch.load(extended / "model.pt", weights_only=True)["config"]["epochs"] == 3
    records = [json.loads(line) for line in (extended / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]


def test_a_onecycle_run_killed_mid_run(tmp_path: Path, capsys) -> None:
    """Issue 24's case: kill a OneCycle run, resume it with another length: refused in one line (a OneCycle of
    another length gives every step another rate), with or without --extend; with its own length it finishes."""
    sets = [*ASL, "lr_schedule=onecycle"]
    run = tmp_path / "run"
    assert cli(train_args(run, "--epochs", "2", sets=sets)) == 0
    straight = weights(CheckpointManager(run / "checkpoints").list()[-1].path)
    kill_after(run, 3)
    line = refused(train_args(run, "--epochs", "3", "--resume", sets=sets), run, capsys)
    assert "epochs is 3 but the run used 2" in line
    line = refused(train_args(run, "--epochs", "3", "--resume", "--extend", sets=sets), run, capsys)
    assert re.search(r"lr_schedule onecycle gives step \d another learning rate", line) and "3 steps done" in line
    line = refused(train_args(run, "--resume", sets=sets), run, capsys)  # the default length, 120
    assert "epochs is 120" in line
    capsys.readouterr()
    assert cli(train_args(run, "--epochs", "2", "--resume", sets=sets)) == 0, capsys.readouterr().err
    assert same(weights(CheckpointManager(run / "checkpoints").list()[-1].path), straight)


TWO = ["mode=two-stage", "encoder.name=test_resnet", "dataset.name=demo", "dataset.image_size=16",
       "dataset.options={n_train: 16, n_valid: 8, n_test: 8}", "dataset.augment.num_ops=1", "contrastive.epochs=2",
       "contrastive.batch_size=8", "contrastive.mdn_hidden=[16, 8]", "classifier.epochs=1", "classifier.batch_size=8",
       "classifier.augment=false", "checkpoint.every_n_iterations=1", "checkpoint.keep_last=20", "workers=0",
       "amp=false", "lr_schedule=constant"]  # fmt: skip


def test_a_stage_that_has_not_begun_takes_the_new_value_and_records_it(tmp_path: Path, capsys) -> None:
    """Killed in the contrastive stage, a resume may change the classifier's settings (that stage has used none of
    them yet): the classifier trains with the new lr, and config.yaml and model.pt say so."""
    run = tmp_path / "run"
    assert cli(train_args(run, "--stage", "contrastive", sets=TWO)) == 0
    kill_after(run, 3)
    capsys.readouterr()
    args = [*train_args(run, "--resume", sets=TWO), "--set", "classifier.lr=0.25"]
    assert cli(args) == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records if r["stage"] == "classifier"] == [0.25]
    assert yaml.safe_load((run / "config.yaml").read_text())["classifier"]["lr"] == 0.25
    assert torch.load(run / "model.pt", weights_only=True)["config"]["classifier"]["lr"] == 0.25
    # a key of the stage that ran is another matter
    line = refused([*args, "--set", "contrastive.tau=0.5"], run, capsys)
    assert "contrastive.tau is 0.5 but the run used 0.2" in line


def test_the_classifier_stage_refuses_a_contrastive_stage_trained_otherwise(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert cli(train_args(run, "--stage", "contrastive", sets=TWO)) == 0
    line = refused([*train_args(run, "--stage", "classifier", sets=TWO), "--set", "contrastive.lambda=0.9"], run,
                   capsys)  # fmt: skip
    assert "contrastive.lambda is 0.9 but the run used 0.3" in line
    kill_after(run, 3)  # the contrastive stage did not finish: the classifier has nothing to build on
    line = refused(train_args(run, "--stage", "classifier", sets=TWO), run, capsys)
    assert "did not finish" in line and "--stage contrastive --resume" in line
