"""The library's exception hierarchy.

Every error raised on purpose by tensorstore_fs derives from :class:`TensorstoreError`, and each
subclass also derives from the builtin a caller would naturally catch (``ValueError``,
``FileNotFoundError``, ...), so ``except ValueError`` keeps working for code that does not know us.
"""

from __future__ import annotations

__all__ = [
    "TensorstoreError",
    "SchemaError",
    "InvalidArgumentError",
    "DatasetNotFoundError",
    "DatasetExistsError",
    "CorruptDatasetError",
    "UnsupportedFormatError",
    "CommitConflictError",
    "StorageError",
    "UnsafeCommitError",
]


class TensorstoreError(Exception):
    """Root of every error raised by tensorstore_fs."""


class SchemaError(TensorstoreError, ValueError):
    """A schema is invalid, or data does not match its schema."""


class InvalidArgumentError(TensorstoreError, ValueError):
    """An argument passed to a tensorstore_fs function is not acceptable."""


class DatasetNotFoundError(TensorstoreError, FileNotFoundError):
    """The URL does not hold a tensorstore_fs dataset (or the requested version)."""


class DatasetExistsError(TensorstoreError, FileExistsError):
    """A write would touch an existing dataset or directory and the mode forbids it."""


class CorruptDatasetError(TensorstoreError, OSError):
    """A manifest or shard file is truncated, tampered with or otherwise unreadable."""


class UnsupportedFormatError(CorruptDatasetError):
    """A manifest or schema was written with a format version this library does not know."""


class CommitConflictError(TensorstoreError, FileExistsError):
    """Another writer committed the same version first and the commit could not be rebased."""


class StorageError(TensorstoreError, OSError):
    """The storage under a dataset failed: a network error, a timeout, a refused request. The
    message names the URL and the operation."""


class UnsafeCommitError(StorageError):
    """A commit was refused because the filesystem cannot create a file only if it does not exist
    yet, so two writers committing at once could overwrite each other's version."""
