"""File-backed tensor rows: batches that say where their bytes are instead of carrying them.

A fixed-shape tensor column of a local shard is one plain, uncompressed run of bytes per row group
(:mod:`tensorstore_fs.parquet.pages`). A batch of such rows can therefore travel as a few numbers —
file, byte offset, row indices — and be materialised where it is consumed:

* rows that are consecutive in one file become a **private copy-on-write memory map** of those
  bytes: no copy at all, the page cache is the batch; writing to it (in-place augmentation) copies
  only the touched pages and never reaches the file;
* rows from anywhere (a shuffled batch) are gathered from read-only maps into one array
  (recycled once its consumer lets go of it), out of the process's kept maps of the files
  (:data:`tensorstore_fs.parquet.rowgroups.FILES`).

The PyTorch adapter uses this to hand DataLoader worker batches to the main process without
pushing every byte through shared memory: the worker sends a :class:`FileRows` (a few hundred
bytes) and the main process maps the rows itself. Shard files are immutable once committed, so
the bytes a worker located are the bytes the main process maps.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .._pool import RecyclingPool
from .rowgroups import FILES, private_view

__all__ = ["FileRows"]

_pool = RecyclingPool()  # gathered batches reuse arrays their consumers let go of
_lock = threading.RLock()  # batches may be unpickled on the DataLoader's pin-memory thread


@dataclass(frozen=True, eq=False)
class FileRows:
    """Rows of one fixed-shape tensor column located in local files.

    Parameters
    ----------
    dtype : str
        Little-endian numpy dtype string of the values.
    row_shape : tuple of int
        Shape of one row.
    paths, offsets : tuple
        Per segment (one column chunk): the file and the byte offset of that chunk's row 0.
    segment : ndarray of int32
        For each output row, the segment it comes from.
    rows : ndarray of int64
        For each output row, its row index inside the segment's column chunk.
    """

    dtype: str
    row_shape: tuple[int, ...]
    paths: tuple[str, ...]
    offsets: tuple[int, ...]
    segment: np.ndarray
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def row_nbytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * int(np.prod(self.row_shape, dtype=np.int64)))

    def is_contiguous(self) -> bool:
        """All rows consecutive, in order, in one file (materialised without a copy)."""
        n = len(self.rows)
        if n == 0 or (n > 1 and (self.segment[0] != self.segment[-1] or np.any(self.segment != self.segment[0]))):
            return False
        return int(self.rows[-1]) - int(self.rows[0]) == n - 1 and bool(np.all(np.diff(self.rows) == 1))

    def materialize(self) -> np.ndarray:
        """A writable ``(n, *row_shape)`` array: a copy-on-write map of the file where the rows
        are consecutive (and element-aligned), else a gathered copy."""
        dtype = np.dtype(self.dtype)
        n, rb = len(self.rows), self.row_nbytes
        shape = (n, *self.row_shape)
        if self.is_contiguous():
            s = int(self.segment[0])
            offset = self.offsets[s] + int(self.rows[0]) * rb
            if offset % dtype.itemsize == 0:
                return private_view(self.paths[s], offset, n * rb).view(dtype).reshape(shape)
        if n == 0:
            return np.empty(shape, dtype)
        with _lock:
            out = _pool.empty(shape, dtype)
            self.gather_into(out.reshape(-1).view(np.uint8))
        return out

    def gather_into(self, out: np.ndarray) -> None:
        """Copy the rows, in order, into the ``len(self) * row_nbytes`` bytes of ``out`` (uint8)."""
        n, rb = len(self.rows), self.row_nbytes
        flat = out[:n * rb].reshape(n, rb)
        cuts = np.concatenate([[0], np.flatnonzero(np.diff(self.segment)) + 1, [n]])
        with _lock:  # the kept maps and the release counter are shared by this process's threads
            for a, b in zip(cuts[:-1], cuts[1:]):
                self._gather(int(self.segment[a]), self.rows[a:b], flat[a:b])

    def _gather(self, s: int, rows: np.ndarray, out: np.ndarray) -> None:
        rb = self.row_nbytes
        lo, hi = int(rows.min()), int(rows.max()) + 1
        first, end = self.offsets[s] + lo * rb, self.offsets[s] + hi * rb
        with FILES.borrow(self.paths[s]) as f:
            mm = f.map
            if end > len(mm):
                raise OSError(f"{self.paths[s]}: rows beyond the end of the file (was it replaced?)")
            view = np.frombuffer(mm, dtype=np.uint8, count=end - first, offset=first).reshape(hi - lo, rb)
            try:
                # mode="clip" avoids numpy's buffered second copy; every row is inside the view
                np.take(view, rows - lo, axis=0, out=out, mode="clip")
            finally:
                del view  # no export may outlive this call: an evicted map must be closable
        FILES.viewed(len(rows) * rb)
