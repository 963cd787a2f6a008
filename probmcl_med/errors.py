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


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt or belongs to another run (classes, encoder)."""


class PluginError(UserError):
    """A plugin file or entry point that failed to import."""
