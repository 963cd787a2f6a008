"""Every refusal of ``train`` is decided before anything is written: the run folder's files (hidden ones included)
are compared byte for byte before and after each refused command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_inference import cli, make_csv_dataset

from probmcl_med.engine.checkpoint import CheckpointManager

SETS = ["mode=two-stage", "encoder.name=test_resnet", "dataset.name=csv", "dataset.image_size=32",
        "dataset.augment.num_ops=1", "contrastive.epochs=1", "contrastive.batch_size=4",
        "contrastive.mdn_hidden=[16, 8]", "classifier.epochs=2", "classifier.batch_size=4", "workers=0",
        "amp=false"]  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes (folders too, as empty entries, so a new empty folder shows)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>") for p in folder.rglob("*")}


def train_args(run: Path, data: Path, *extra: str) -> list[str]:
    sets = [*SETS, f"dataset.root={data}", *extra]
    return ["train", *(a for s in sets for a in ("--set", s)), "--output-dir", str(run)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished two-stage run on a small csv dataset: (run folder, data folder)."""
    root = tmp_path_factory.mktemp("refusals")
    make_csv_dataset(root / "data", n_per_split=8)
    assert cli(train_args(root / "run", root / "data")) == 0
    return root / "run", root / "data"


@pytest.fixture
def run_copy(finished: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    run, data = finished
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy, data


def refused(args: list[str], run: Path, capsys: pytest.CaptureFixture[str], code: int = 1) -> str:
    """Run ``args``; check the exit code, one error line and no traceback, and that ``run`` is unchanged."""
    capsys.readouterr()
    before = snapshot(run)
    assert cli(args) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == (1 if code else 0) and "Traceback" not in err, err
    assert snapshot(run) == before
    return lines[0] if lines else ""


def test_a_finished_run_without_resume(run_copy, capsys) -> None:
    run, data = run_copy
    line = refused(train_args(run, data), run, capsys)
    assert "already holds checkpoints" in line and "--resume" in line


def test_resume_with_other_classes(run_copy, capsys) -> None:
    run, data = run_copy
    line = refused([*train_args(run, data, "dataset.options.classes=[epithelium, stroma]"), "--resume"], run, capsys)
    assert "other classes" in line


def test_resume_with_another_encoder(run_copy, capsys) -> None:
    run, data = run_copy
    line = refused([*train_args(run, data, "encoder.name=test_efficientnet"), "--resume"], run, capsys)
    assert "test_efficientnet" in line and "test_resnet" in line


def test_resume_with_other_epoch_lengths(run_copy, capsys) -> None:
    run, data = run_copy
    newest = CheckpointManager(run / "checkpoints", 3).list()[-1].path
    newest.unlink()  # the run now stops after classifier epoch 1 of 2: a resume has work to do
    line = refused([*train_args(run, data, "classifier.batch_size=2"), "--resume"], run, capsys)
    assert "classifier.batch_size is 2 but the run used 4" in line


def test_a_bad_config(run_copy, capsys) -> None:
    run, data = run_copy
    line = refused([*train_args(run, data, "classifier.epochs=0"), "--resume"], run, capsys)
    assert "classifier.epochs" in line


def lock_holder(run: Path) -> subprocess.Popen[str]:
    """Another process that holds the run folder's lock (it says so once it does)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom probmcl_med.runlock import RunLock\n"
         "RunLock(sys.argv[1]).acquire(); print('holding', flush=True); time.sleep(120)", str(run)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    return holder


def test_a_folder_in_use(run_copy, capsys) -> None:
    run, data = run_copy
    holder = lock_holder(run)
    try:
        line = refused([*train_args(run, data), "--resume"], run, capsys)
        assert f"process {holder.pid} " in line
    finally:
        holder.kill()
        holder.wait()


def test_resuming_a_finished_run_writes_nothing(run_copy, capsys) -> None:
    run, data = run_copy
    refused([*train_args(run, data), "--resume"], run, capsys, code=0)


def test_a_refusal_after_a_kill_keeps_the_stale_lock_note(run_copy, capsys) -> None:
    """A ``kill -9`` leaves ``.lock`` (a note; the kernel dropped the lock itself): a refused command takes the lock,
    and puts the note back byte for byte (it deleted it before)."""
    run, data = run_copy
    holder = lock_holder(run)
    holder.kill()
    holder.wait()
    note = (run / ".lock").read_bytes()
    assert f'"pid": {holder.pid}'.encode() in note
    refused(train_args(run, data), run, capsys)  # a finished run without --resume
    refused([*train_args(run, data, "classifier.lr=0.5"), "--resume"], run, capsys)
    assert (run / ".lock").read_bytes() == note
