"""One writer per run folder: an OS file lock on ``RUN/.lock`` that dies with its process.

::

    with RunLock(Path("runs/exp1")):      # a second holder gets a one-line RunFolderBusy naming this PID and time
        ...                               # train, resume or sweep into runs/exp1

The lock is ``fcntl.flock`` on ``RUN/.lock``: the kernel releases it when the holding process ends, however it ends
(``kill -9`` included), so a crash never leaves a stale lock. The file holds the holder's PID, host and start time,
for the message a second writer gets; it is removed when the lock is released, so a finished run folder holds no
``.lock``. A ``.lock`` left by a killed process is only a note: the next writer takes the lock and rewrites it, and
a command that is refused puts the note back as it found it (``release(keep_stale_note=True)``).

Readers (evaluate, predict, info) take no lock: every file of a run folder is replaced by an atomic rename
(:mod:`probmcl_med.fileio`), so a reader always sees a complete file, the previous one or the new one.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from probmcl_med.errors import UserError

LOCK_FILE = ".lock"


class RunFolderBusy(UserError):
    """Another process holds the run folder's lock."""


class RunLock:
    """An exclusive, non-blocking lock on a run folder (a context manager; also ``acquire()`` / ``release()``).

    Args:
        folder: the run folder. It is created when missing, and removed again on release when the lock was all
            that was written to it (a refused command leaves no trace).
        command: what the holder is doing, for the message a second writer gets (``train``, ``sweep``).

    Raises (from ``acquire``):
        RunFolderBusy: another process holds the lock; the message names its PID, host and start time.
    """

    def __init__(self, folder: str | Path, command: str = "train") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.command = command
        self._fd: int | None = None
        self._created: list[Path] = []  # folders this lock created, deepest first
        self._stale: tuple[bytes, tuple[int, int]] | None = None  # a killed holder's note: bytes, (atime, mtime) ns

    # ------------------------------------------------------------------------------------------------------------
    def acquire(self) -> RunLock:
        """Take the lock (at once or never: a busy folder is refused, not waited for)."""
        import fcntl

        if self._fd is not None:
            return self
        self._created = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        self.folder.mkdir(parents=True, exist_ok=True)
        stale = _stale_note(self.path)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                self._forget_folder()
                raise RunFolderBusy(self.busy_message(holder)) from None
            except BaseException:
                os.close(fd)
                raise
            if _same_file(fd, self.path):  # not a file a releasing holder unlinked between our open and our flock
                break
            os.close(fd)
        self._fd = fd
        self._stale = stale
        note = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": self.command,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(note) + "\n").encode(), 0)
        return self

    def release(self, keep_stale_note: bool = False) -> None:
        """Remove ``.lock`` and drop the lock (closing the descriptor releases the flock).

        Args:
            keep_stale_note: the command wrote nothing (it was refused): a ``.lock`` that a killed holder left before
                this command is put back as it was (its bytes and times), so the folder stays byte for byte.
        """
        if self._fd is None:
            return
        try:
            if keep_stale_note and self._stale is not None:
                data, times = self._stale
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, data, 0)
                os.utime(self.path, ns=times)
            else:
                self.path.unlink(missing_ok=True)  # while still holding the lock: see acquire's same-file check
        finally:
            os.close(self._fd)
            self._fd = None
            self._forget_folder()

    def busy_message(self, holder: str) -> str:
        """The one line a second writer gets, from what the holder wrote into the lock file."""
        try:
            note = json.loads(holder)
            who = f"{note['command']} process {int(note['pid'])} on {note['host']}, started {note['started']}"
        except (ValueError, KeyError, TypeError):  # the holder is between its flock and its note
            who = "another process (starting now)"
        return (
            f"run folder {self.folder} is in use by {who}; wait for it to finish (or stop it), or use another "
            "output folder"
        )

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def _forget_folder(self) -> None:
        """Remove the folders this lock created, deepest first, as long as nothing else was written into them."""
        created, self._created = self._created, []
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                return  # not empty: the command wrote its files; keep them

    # ------------------------------------------------------------------------------------------------------------
    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _stale_note(path: Path) -> tuple[bytes, tuple[int, int]] | None:
    """The bytes and times of a ``.lock`` already there (a holder's, or one a killed holder left), or None."""
    try:
        info = path.stat()
        return path.read_bytes(), (info.st_atime_ns, info.st_mtime_ns)
    except OSError:
        return None


def _read(fd: int) -> str:
    """What the holder wrote into the lock file (empty while it is starting)."""
    try:
        return os.pread(fd, 512, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open descriptor ``fd`` is the file now at ``path``."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
