"""Exceptions raised while finding, downloading and reading checkpoints.

They all derive from `CheckpointError`, so a caller can catch one type for "this checkpoint
cannot be used" while tests (and users) can still tell the causes apart. Each message names
the file or model involved and says what to do next.
"""

from __future__ import annotations


class CheckpointError(Exception):
    """Base class of every checkpoint problem."""


class UnknownModelError(CheckpointError, ValueError):
    """A name is neither a registered model, an existing path, nor a model-hub id."""


class DownloadError(CheckpointError):
    """A package could not be downloaded (network, index, or a package missing there)."""


class ChecksumError(CheckpointError):
    """An assembled or local file does not have the expected sha256."""

    def __init__(self, path: str, expected: str, actual: str, hint: str = ""):
        self.path, self.expected, self.actual = path, expected, actual
        message = f"sha256 mismatch for {path}: expected {expected}, got {actual}."
        if hint:
            message += " " + hint
        super().__init__(message)


class CorruptCheckpointError(CheckpointError, ValueError):
    """The file is not a valid checkpoint: bad magic, truncated, or inconsistent header."""


class UnsupportedArchitectureError(CheckpointError, ValueError):
    """The checkpoint describes an architecture that specjax's decoder does not implement."""
