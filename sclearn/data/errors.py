"""The data package's one exception type (and the decode error that names a corrupt image)."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset, split or file cannot be used as asked; the message says what is wrong and how to fix it."""


class _DecodeError(DataError):
    """An image failed to decode; ``position`` is its place in the requested batch (mapped to a row later)."""

    def __init__(self, message: str, position: int = 0):
        super().__init__(message)
        self.position = position
