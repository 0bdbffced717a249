"""The read layer: what the framework adapters and converters may use.

* :class:`ReadOptions` — the arguments of a read, validated once;
* :func:`open_stream` / :class:`PlannedStream` — one (rank, worker)'s planned share of each epoch;
* :class:`StreamState` — the saved position of a reader (:mod:`tensorstore_fs.read.resume`);
* :class:`FileRows` — located tensor rows, as a stream hands them out with ``located="rows"``;
* :func:`aligned_empty` / :data:`ALIGN` — batch memory as TensorFlow takes it without a copy.

Modules: ``options`` (ReadOptions), ``prune`` (row groups a filter leaves, from statistics),
``scan`` (storage-order reads), ``dataset`` (a committed version), ``selection`` (the rows a
filter leaves), ``resume`` (pure resume arithmetic), ``pieces`` / ``gather`` / ``stream`` (the
planned stream).
"""

from __future__ import annotations

from .._pool import ALIGN, aligned_empty
from ..parquet.filemap import FileRows
from .dataset import Dataset, open_dataset
from .options import DEFAULT_WINDOW_BYTES, VARIABLE_MODES, ReadOptions
from .resume import StreamState
from .stream import LOCATED_MODES, PAD_COLUMN, READ_BYTES, ROW_ID_COLUMN, PlannedStream, open_stream

__all__ = [
    "ALIGN",
    "DEFAULT_WINDOW_BYTES",
    "LOCATED_MODES",
    "PAD_COLUMN",
    "READ_BYTES",
    "ROW_ID_COLUMN",
    "VARIABLE_MODES",
    "Dataset",
    "FileRows",
    "PlannedStream",
    "ReadOptions",
    "StreamState",
    "aligned_empty",
    "open_dataset",
    "open_stream",
]
