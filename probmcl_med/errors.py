"""Errors that the CLI turns into one-line messages (exit code 1) instead of tracebacks.

Every error a user can cause and fix (a bad config key, a missing file, a corrupt image, an unknown name) is raised
as a subclass of :class:`UserError` with a message that names the file, row or key and says what to do.
"""

from __future__ import annotations


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


def one_line_message(exc: BaseException) -> str:
    """The first line of an error's message, also when torch re-raised it from a DataLoader worker.

    torch re-raises a worker's exception as the same type with the message ``Caught X in DataLoader worker process
    N.`` followed by the worker's traceback, whose last line is ``module.X: original message``; the original message
    is what the user needs (the file and row), so it is recovered from there.
    """
    text = str(exc)
    if text.startswith("Caught ") and "DataLoader worker" in text.splitlines()[0]:
        last = text.rstrip().splitlines()[-1]
        marker = f"{type(exc).__name__}: "
        text = last.split(marker, 1)[1] if marker in last else last
    lines = text.strip().splitlines()
    return lines[0] if lines else type(exc).__name__
