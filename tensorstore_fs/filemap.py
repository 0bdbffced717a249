"""File-backed tensor rows: batches that say where their bytes are instead of carrying them.

A fixed-shape tensor column of a local shard is one plain, uncompressed run of bytes per row group
(:mod:`tensorstore_fs.pages`). A batch of such rows can therefore travel as a few numbers —
file, byte offset, row indices — and be materialised where it is consumed:

* rows that are consecutive in one file become a **private copy-on-write memory map** of those
  bytes: no copy at all, the page cache is the batch; writing to it (in-place augmentation) copies
  only the touched pages and never reaches the file;
* rows from anywhere (a shuffled batch) are gathered from read-only maps into one array
  (recycled once its consumer lets go of it).

The PyTorch adapter uses this to hand DataLoader worker batches to the main process without
pushing every byte through shared memory: the worker sends a :class:`FileRows` (a few hundred
bytes) and the main process maps the rows itself. Shard files are immutable once committed, so
the bytes a worker located are the bytes the main process maps.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ._pool import RecyclingPool

__all__ = ["FileRows", "private_view"]

_GRANULE = mmap.ALLOCATIONGRANULARITY
_pool = RecyclingPool()  # gathered batches reuse arrays their consumers let go of
_lock = threading.RLock()  # batches may be unpickled on the DataLoader's pin-memory thread


READ_MAPS = 8  # whole-file read-only maps kept per process for gathering (least recently used go)
RELEASE_BYTES = 128 << 20  # gathered bytes between releases of the maps' resident pages
_read_maps: OrderedDict[str, mmap.mmap] = OrderedDict()
_gathered_bytes = 0


def _file_map(path: str) -> mmap.mmap:
    """A read-only map of the whole file ``path``, kept (LRU) across batches: mapping and
    unmapping for every gather costs more than the gather. Batches only copy out of it."""
    mm = _read_maps.get(path)
    if mm is None:
        fd = os.open(path, os.O_RDONLY)
        try:
            mm = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            os.close(fd)  # the mapping stays valid without the descriptor
        _read_maps[path] = mm
        while len(_read_maps) > READ_MAPS:
            _read_maps.popitem(last=False)[1].close()
    else:
        _read_maps.move_to_end(path)
    return mm


def _private_map(path: str, offset: int, length: int) -> tuple[mmap.mmap, int]:
    """A writable copy-on-write map of ``length`` bytes of ``path`` at ``offset`` (the file never
    changes): ``(map, start of the bytes in it)``."""
    start = offset - offset % _GRANULE
    fd = os.open(path, os.O_RDONLY)
    try:
        if offset + length > os.fstat(fd).st_size:
            raise OSError(f"{path}: {length} bytes at {offset} lie beyond the end of the file (was it replaced?)")
        mm = mmap.mmap(fd, offset + length - start, flags=mmap.MAP_PRIVATE,
                       prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
    finally:
        os.close(fd)  # the mapping stays valid without the descriptor
    return mm, offset - start


def private_view(path: str, offset: int, length: int) -> np.ndarray:
    """A writable byte view of ``length`` bytes of ``path`` at ``offset`` through a private
    copy-on-write map of just that range (unmapped when the last view of it goes)."""
    mm, at = _private_map(path, offset, length)
    return np.frombuffer(mm, dtype=np.uint8, count=length, offset=at)


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
                mm, at = _private_map(self.paths[s], offset, n * rb)
                return np.frombuffer(mm, dtype=np.uint8, count=n * rb, offset=at).view(dtype).reshape(shape)
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
        mm = _file_map(self.paths[s])
        first, end = self.offsets[s] + lo * rb, self.offsets[s] + hi * rb
        if end > len(mm):
            raise OSError(f"{self.paths[s]}: rows beyond the end of the file (was it replaced?)")
        view = np.frombuffer(mm, dtype=np.uint8, count=end - first, offset=first).reshape(hi - lo, rb)
        try:
            # mode="clip" avoids numpy's buffered second copy; every row is inside the view
            np.take(view, rows - lo, axis=0, out=out, mode="clip")
        finally:
            del view  # no export may outlive this call: an evicted map must be closable
        _release_after(len(rows) * rb)


def _release_after(nbytes: int) -> None:
    """Every ``RELEASE_BYTES`` gathered, drop the kept maps' pages from this process's page tables
    (not from the page cache): resident memory stays flat instead of collecting the files' pages,
    and the cost (a TLB flush) is paid once per that many bytes rather than per batch."""
    global _gathered_bytes
    _gathered_bytes += nbytes
    if _gathered_bytes >= RELEASE_BYTES:
        _gathered_bytes = 0
        for mm in _read_maps.values():
            mm.madvise(mmap.MADV_DONTNEED)
