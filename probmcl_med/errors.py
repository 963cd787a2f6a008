"""Errors that the CLI turns into one-line messages (exit code 1) instead of tracebacks.

Every error a user can cause and fix (a bad config key, a missing file, a corrupt image, an unknown name) is raised
as a subclass of :class:`UserError` with a message that names the file, row or key and says what to do. An
operating-system error (full disk, read-only folder, no permission) is put into one line by :func:`os_error_message`.
"""

from __future__ import annotations

import errno
import io
import pickletools
import re
from pathlib import Path


class UserError(Exception):
    """An error caused by input the user can fix; its message is one line."""


class ConfigError(UserError):
    """A run configuration that does not validate (unknown key, bad value, unregistered name)."""


class DataError(UserError):
    """A dataset, image, slide, CSV or manifest that cannot be used as it is."""


class EmptySplit(DataError):
    """A dataset split with no rows (a CSV with train and test rows only has no valid split): training goes on
    without validation when it is the validation split, and ``data check`` reports it as empty, not as an error."""


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt or belongs to another run (classes, encoder)."""


class PluginError(UserError):
    """A plugin file or entry point that failed to import."""


class ContractError(PluginError):
    """A component (built-in or plugin) that breaks its registry's contract on a tiny batch
    (:mod:`probmcl_med.testing`)."""


class TrainingDiverged(UserError):
    """A training step whose loss is not finite: the run stops before a checkpoint of that step is written."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the message says where the run stopped and which checkpoint a ``--resume`` continues
    from. A KeyboardInterrupt, so whatever stops on Ctrl-C stops on it too; the CLI prints it and exits with 130."""

    def __init__(self, message: str, checkpoint: str | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "interrupted"


_OS_ERRORS = {
    errno.ENOSPC: ("no space left on the device", "free some space or write to another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or ask for a larger quota"),
    errno.EROFS: ("the file system is read-only", "write to a folder on a writable disk"),
    errno.EACCES: ("permission denied", "fix the permissions or write to a folder you own"),
    errno.EPERM: ("operation not permitted", "fix the permissions or write to a folder you own"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.EISDIR: ("is a folder, not a file", "give a file path"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the path"),
    errno.EMFILE: ("too many open files", "use fewer data-loading workers or raise the limit (ulimit -n)"),
}
"""errno -> (what happened, what to do) for the operating-system errors a user can fix."""


def os_error_message(exc: OSError) -> str:
    """One line for an operating-system error: the path, what happened and what to do.

    Every file the package writes is written to a temporary name and renamed (:mod:`probmcl_med.fileio`), so the
    message can promise that the files already there, the last good checkpoint included, are intact.
    """
    what, todo = _OS_ERRORS.get(exc.errno, (exc.strerror or type(exc).__name__, "check the path and the disk"))
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    where = f"{' -> '.join(paths)}: " if paths else ""
    return f"{where}{what}; {todo} (files already written there are intact; nothing half-written was left)"


def first_words(text: str, limit: int = 160) -> str:
    """The first line of ``text``, shortened to at most ``limit`` characters at a word boundary (with an ellipsis)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if len(line) <= limit:
        return line
    cut = line[: limit - 1].rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:") + "…"


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def unpickle_refusal(exc: BaseException) -> str | None:
    """The reason ``torch.load(weights_only=True)`` refused a file that holds Python objects, or None.

    torch names the refused class or function as ``GLOBAL module.name``; a file damaged in other ways (truncated,
    not a zip, a broken pickle stream) gives None, so it is reported as damage, not as a refusal.
    """
    found = _GLOBAL.search(str(exc))
    if found is None:
        return None
    return f"holds Python objects beyond tensors ({found.group(1)}); refusing to unpickle it"


def pickled_globals(path: str | Path, limit: int = 64) -> list[str] | None:
    """The classes and functions a pickle file names (``GLOBAL``, ``STACK_GLOBAL``), read with :mod:`pickletools`
    without executing anything; None when the file is not a complete pickle stream (damaged, or not a pickle).

    Reads the file's successive pickles (torch's legacy, non-zip format is several in a row) until its end.
    """
    names: list[str] = []
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    stream = io.BytesIO(data)
    try:
        while stream.tell() < len(data) and len(names) < limit:
            strings: list[str] = []
            for opcode, arg, _ in pickletools.genops(stream):
                if opcode.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # pickletools raises ValueError and others on a stream that is not a pickle, or torn
        return None
    return list(dict.fromkeys(names))


_TORCH_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode")
"""What a torch file of tensors names (storages, rebuild functions, an OrderedDict state dict)."""


def torch_load_error(
    what: str, exc: BaseException, if_refused: str, if_damaged: str, path: str | Path | None = None
) -> CheckpointError:
    """The one-line error for a file that ``torch.load(weights_only=True)`` did not read.

    Args:
        what: the file as named in messages ("checkpoint RUN/model.pt").
        exc: what torch raised.
        if_refused: what to do when the file holds Python objects beyond tensors (:func:`unpickle_refusal`, or, for a
            pickle torch's reader gives no name for, such as one of the old non-zip format, :func:`pickled_globals`).
        if_damaged: what to do when it is damaged (truncated, not a torch file).
        path: the file, read again (never executed) when torch's message does not say what it refused.
    """
    refusal = unpickle_refusal(exc)
    if refusal is None and path is not None:
        named = pickled_globals(path)
        objects = [n for n in named or () if not n.startswith(_TORCH_GLOBALS)]
        if objects:
            refusal = f"holds Python objects beyond tensors ({', '.join(objects[:3])}); refusing to unpickle it"
        elif named is not None:
            refusal = "is a Python pickle that the weights-only reader cannot read (not a file torch.save wrote)"
    if refusal is not None:
        return CheckpointError(f"{what} {refusal}; {if_refused}")
    text = first_words(str(exc)) or "no detail"
    return CheckpointError(f"{what} is corrupt or truncated ({type(exc).__name__}: {text}); {if_damaged}")


def one_line_message(exc: BaseException) -> str:
    """The first line of an error's message, also when torch re-raised it from a DataLoader worker.

    torch re-raises a worker's exception as the same type with the message ``Caught X in DataLoader worker process
    N.`` followed by the worker's traceback, whose last line is ``module.X: original message``; the original message
    is what the user needs (the file and row), so it is recovered from there.
    """
    if isinstance(exc, OSError) and exc.errno is not None:
        return os_error_message(exc)
    text = str(exc)
    if text.startswith("Caught ") and "DataLoader worker" in text.splitlines()[0]:
        last = text.rstrip().splitlines()[-1]
        marker = f"{type(exc).__name__}: "
        text = last.split(marker, 1)[1] if marker in last else last
    lines = text.strip().splitlines()
    return lines[0] if lines else type(exc).__name__
