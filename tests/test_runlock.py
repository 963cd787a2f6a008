"""The run-folder lock: a second writer is refused in one line naming the holder; the lock dies with its process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from probmcl_med.errors import UserError
from probmcl_med.runlock import LOCK_FILE, RunFolderBusy, RunLock

HOLDER = """
import sys, time
from probmcl_med.runlock import RunLock
lock = RunLock(sys.argv[1], sys.argv[2]).acquire()
print("holding", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path: Path):
    """Start a process that holds the lock of ``tmp_path / 'run'``; yields (folder, process); kills it at the end."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"a finished model")
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), "train"], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "holding"
    yield folder, process
    if process.poll() is None:
        process.kill()
    process.wait()


def test_a_second_writer_is_refused_naming_the_holder(holder) -> None:
    folder, process = holder
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(RunFolderBusy) as err:
        RunLock(folder).acquire()
    message = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in message
    assert f"process {process.pid} " in message and str(folder) in message
    assert time.strftime("%Y-%m-%d") in message  # the holder's start time (today)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the refusal wrote nothing


def test_the_lock_dies_with_a_killed_process(holder) -> None:
    folder, process = holder
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert (folder / LOCK_FILE).is_file()  # the note stays behind ...
    with RunLock(folder, "sweep") as lock:  # ... but the lock does not: no stale lock after kill -9
        assert lock.held
        note = json.loads((folder / LOCK_FILE).read_text())
        assert note["pid"] == os.getpid() and note["command"] == "sweep"
    assert not (folder / LOCK_FILE).exists()
    assert (folder / "model.pt").read_bytes() == b"a finished model"


def test_two_locks_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunFolderBusy, match=f"train process {os.getpid()} "):
        RunLock(tmp_path).acquire()
    first.release()
    RunLock(tmp_path).acquire().release()


def test_a_lock_that_wrote_nothing_leaves_no_folder(tmp_path: Path) -> None:
    nested = tmp_path / "runs" / "new" / "exp"
    with RunLock(nested):
        assert nested.is_dir()
    assert not (tmp_path / "runs").exists()
    with RunLock(nested):
        (nested / "config.yaml").write_text("seed: 0\n")
    assert sorted(p.name for p in nested.iterdir()) == ["config.yaml"]


def test_a_holder_between_flock_and_note_is_still_named(tmp_path: Path) -> None:
    import fcntl

    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(RunFolderBusy, match="another process"):
            RunLock(tmp_path).acquire()
    finally:
        os.close(fd)
