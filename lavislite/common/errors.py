"""Errors that are the user's to fix, not lavislite's.

Entry points print a ``UserError`` as a short ``error: ...`` message and exit
non-zero, without a traceback (``--debug`` or ``LAVISLITE_DEBUG=1`` shows it);
anything else is a bug and keeps its traceback. Each subclass also derives from
the built-in exception a caller would expect (``ValueError``,
``FileNotFoundError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in what the user gave: a config, data, a path, a checkpoint."""


class DataError(UserError, ValueError):
    """Annotations or images are malformed or missing; the message names the file and sample."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the config names does not exist."""


class CheckpointError(UserError, ValueError):
    """A checkpoint does not fit the model (shapes, keys, a load that fills nothing)."""
