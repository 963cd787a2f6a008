"""Full disks, read-only folders and refused pickles: one line naming the path and what to do, old files intact.

The faults are injected: ``os.fsync`` raising ENOSPC (the disk fills while a file is written) and ``mkstemp`` /
``mkdtemp`` raising EROFS (the folder is on a read-only mount); a real read-only folder where the tests do not run
as root (root ignores permissions).
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path

import pytest
import torch
from test_inference import cli, error_line, make_bundle, make_csv_dataset, write_images

from probmcl_med import fileio
from probmcl_med.bundle import read_checkpoint
from probmcl_med.errors import CheckpointError, first_words, os_error_message
from probmcl_med.models.weights import read_state_file


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class FullDisk:
    """``os.fsync`` that raises ENOSPC from its ``after``-th call on (0: at once)."""

    def __init__(self, after: int = 0) -> None:
        self.after, self.calls = after, 0
        self.real = os.fsync

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.calls > self.after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.real(fd)


def read_only(function):
    """``function`` (mkstemp or mkdtemp) that raises EROFS the way the OS does, naming the file it tried."""

    def refuse(*args, dir=None, prefix="", suffix="", **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.path.join(dir or ".", f"{prefix}abc123{suffix}"))

    return refuse


# --------------------------------------------------------------------------------------------------------------------
# The messages
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "fragments"),
    [
        (errno.ENOSPC, ["no space left", "free some space"]),
        (errno.EDQUOT, ["quota", "free some space"]),
        (errno.EROFS, ["read-only", "writable disk"]),
        (errno.EACCES, ["permission denied", "folder you own"]),
    ],
)
def test_os_error_message_names_the_path_and_what_to_do(code: int, fragments: list[str]) -> None:
    message = os_error_message(OSError(code, os.strerror(code), "/data/runs/exp/model.pt"))
    assert message.startswith("/data/runs/exp/model.pt: ") and "\n" not in message and "intact" in message
    for fragment in fragments:
        assert fragment in message


def test_first_words_never_cuts_a_word() -> None:
    text = " ".join(f"word{i:03d}" for i in range(80)) + "\nsecond line"
    short = first_words(text, 100)
    assert len(short) <= 100 and short.endswith("…")
    assert text.startswith(short[:-1]) and text[len(short) - 1] == " "  # the cut falls on a space
    assert first_words("short text\nmore") == "short text"


# --------------------------------------------------------------------------------------------------------------------
# The writers keep the old file and name the destination
# --------------------------------------------------------------------------------------------------------------------


def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"the last good model")
    monkeypatch.setattr(os, "fsync", FullDisk())
    with pytest.raises(OSError) as err:
        fileio.atomic_write_bytes(target, b"x" * 10_000)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert snapshot(tmp_path) == {"model.pt": b"the last good model"}  # no temporary file left


def test_atomic_directory_on_a_full_disk_keeps_the_old_folder(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "report"
    with fileio.atomic_directory(out, ".marker") as tmp:
        (tmp / "report.html").write_text("old report")
    before = snapshot(tmp_path)
    monkeypatch.setattr(os, "fsync", FullDisk())
    with pytest.raises(OSError) as err, fileio.atomic_directory(out, ".marker") as tmp:
        fileio.atomic_write_text(tmp / "report.html", "new")
    assert err.value.filename == str(out / "report.html")
    assert snapshot(tmp_path) == before and b"old report" in before.values()


def test_read_only_folder_names_the_destination(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "mkstemp", read_only(tempfile.mkstemp))
    with pytest.raises(OSError) as err:
        fileio.atomic_write_text(tmp_path / "config.yaml", "a: 1")
    assert err.value.errno == errno.EROFS and err.value.filename == str(tmp_path / "config.yaml")


# --------------------------------------------------------------------------------------------------------------------
# Through the CLI: evaluate --report, predict --out, train
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("oserr")
    make_csv_dataset(root / "data", n_per_split=8)
    make_bundle(root / "run", dataset_root=root / "data")
    write_images(root / "imgs", 2)
    return root


def test_evaluate_report_on_a_full_disk(evaluated: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    report = tmp_path / "report"
    args = ["evaluate", "-c", str(evaluated / "run"), "--split", "test", "--report", str(report), "--device", "cpu"]
    assert cli(args) == 0
    capsys.readouterr()
    before = snapshot(tmp_path)
    monkeypatch.setattr(os, "fsync", FullDisk())
    assert cli(args) == 1
    line = error_line(capsys)
    assert "no space left" in line and str(report) in line and "Traceback" not in line
    assert snapshot(tmp_path) == before


def test_evaluate_report_without_fsync_faults_reaches_a_full_disk_at_write(evaluated, tmp_path, monkeypatch, capsys):
    """The disk fills at a plain ``write`` inside the report folder (Path.write_text, matplotlib): still one line."""
    report = tmp_path / "report"
    real = Path.write_text

    def full(self: Path, *args, **kwargs):
        if self.name == "report.html":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    args = ["evaluate", "-c", str(evaluated / "run"), "--split", "test", "--report", str(report), "--device", "cpu"]
    assert cli(args) == 1
    line = error_line(capsys)
    assert f"{report}: no space left" in line  # a plain write names no file: the folder asked for is named
    assert not report.exists() and not list(tmp_path.iterdir())


def test_predict_out_on_a_full_disk_and_a_read_only_folder(evaluated: Path, tmp_path: Path, monkeypatch, capsys):
    out = tmp_path / "out"
    args = ["predict", str(evaluated / "imgs"), "-c", str(evaluated / "run"), "--out", str(out), "--device", "cpu"]
    assert cli(args) == 0
    capsys.readouterr()
    before = snapshot(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", FullDisk())
        assert cli(args) == 1
    assert "no space left" in error_line(capsys)
    assert snapshot(tmp_path) == before
    with monkeypatch.context() as m:
        m.setattr(tempfile, "mkdtemp", read_only(tempfile.mkdtemp))
        assert cli(args) == 1
    line = error_line(capsys)
    assert f"{out}: the file system is read-only" in line and "writable disk" in line
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_predict_into_a_really_read_only_folder(evaluated: Path, tmp_path: Path, capsys) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        args = ["predict", str(evaluated / "imgs"), "-c", str(evaluated / "run"), "--out", str(locked / "out")]
        assert cli([*args, "--device", "cpu"]) == 1
        line = error_line(capsys)
        assert str(locked / "out") in line and "permission denied" in line
        assert not list(locked.iterdir())
    finally:
        locked.chmod(0o755)


def test_train_on_a_full_disk_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch, capsys) -> None:
    from test_train import TINY

    from probmcl_med.engine.checkpoint import CheckpointManager

    run = tmp_path / "run"
    args = ["train", *(a for s in TINY for a in ("--set", s)), "--output-dir", str(run), "--set", "classifier.epochs=3"]
    fault = FullDisk(after=0)
    real_save = fileio.atomic_write

    def count_checkpoints(path, write):  # the disk fills when the third checkpoint is written
        if Path(path).parent.name == "checkpoints" and len(list(Path(path).parent.glob("ckpt-*.pt"))) == 2:
            monkeypatch.setattr(os, "fsync", fault)
        return real_save(path, write)

    monkeypatch.setattr(fileio, "atomic_write", count_checkpoints)
    monkeypatch.setattr("probmcl_med.bundle.atomic_write", count_checkpoints)
    assert cli(args) == 1
    monkeypatch.undo()
    err = capsys.readouterr().err  # train's progress goes to stderr too
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert "no space left" in line and str(run / "checkpoints") in line and "Traceback" not in err
    saved = CheckpointManager(run / "checkpoints", 3).list()
    assert len(saved) == 2 and all(read_checkpoint(c.path)["format"] for c in saved)
    assert not [p for p in run.rglob("*.tmp")]
    assert cli([*args, "--resume"]) == 0  # the run continues from the last good checkpoint
    assert (run / "model.pt").is_file()


def test_workers_and_batch_size_out_of_range_are_usage_errors(evaluated: Path, capsys) -> None:
    for option, value in (("--workers", "-1"), ("--batch-size", "0")):
        args = ["evaluate", "-c", str(evaluated / "run"), option, value, "--device", "cpu"]
        assert cli(args) == 2
        assert option in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------------
# A pickle that weights_only refuses is named as such
# --------------------------------------------------------------------------------------------------------------------


class Payload:
    """Unpickling this would create a file: proof that the refusal ran no code."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_with_code_is_refused_not_called_corrupt(tmp_path: Path, capsys) -> None:
    Payload.marker = str(tmp_path / "pwned")
    evil = tmp_path / "evil.pt"
    torch.save({"format": "probmcl-med/model", "version": 1, "x": Payload()}, evil)
    for read in (read_checkpoint, read_state_file):
        with pytest.raises(CheckpointError) as err:
            read(evil)
        message = str(err.value)
        assert "holds Python objects beyond tensors" in message and "refusing to unpickle it" in message
        assert "corrupt" not in message and "\n" not in message
        assert re.search(r"beyond tensors \([\w.]+\)", message)  # the global torch refused is named
    assert cli(["info", "-c", str(evil)]) == 1
    line = error_line(capsys)
    assert "refusing to unpickle it" in line and "corrupt" not in line
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("writer", ["pickle protocol 4", "pickle protocol 2", "torch legacy"])
def test_an_old_format_pickle_with_code_is_named_not_called_corrupt(tmp_path: Path, writer: str) -> None:
    """A non-zip pickle (``pickle.dump``, or ``torch.save`` of the old format): torch's reader fails on it without
    naming a class (protocol 4's frames), so the file is read again, by pickletools, which executes nothing."""
    import pickle

    Payload.marker = str(tmp_path / "pwned")
    old = tmp_path / "old.pkl"
    obj = {"format": "probmcl-med/model", "x": Payload()}
    if writer == "torch legacy":
        torch.save(obj, old, _use_new_zipfile_serialization=False)
    else:
        old.write_bytes(pickle.dumps(obj, protocol=int(writer[-1])))
    for read in (read_checkpoint, read_state_file):
        with pytest.raises(CheckpointError) as err:
            read(old)
        message = str(err.value)
        assert re.search(r"holds Python objects beyond tensors \([\w.]+", message), message
        assert "corrupt" not in message and "\n" not in message
    assert not (tmp_path / "pwned").exists()
    torn = tmp_path / "torn.pkl"
    torn.write_bytes(old.read_bytes()[:40])  # a torn stream is damage, as before
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(torn)
