"""Recycled, aligned batch arrays (shared by the stream's gathers and file-mapped batches)."""

from __future__ import annotations

import math
import sys

import numpy as np

__all__ = ["ALIGN", "RecyclingPool", "aligned_empty"]

SMALL_BYTES = 64 << 10  # arrays below this size are not recycled
ALIGN = 64  # bytes: what TensorFlow needs to use a buffer without copying (and cache-line friendly)


def aligned_empty(shape: tuple, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """``(owner, array)``: an uninitialised ``array`` of ``shape`` starting on an ``ALIGN``-byte
    boundary inside the byte buffer ``owner``."""
    nbytes = math.prod(shape) * dtype.itemsize
    buf = np.empty(nbytes + ALIGN, np.uint8)
    start = -buf.ctypes.data % ALIGN
    return buf, buf[start:start + nbytes].view(dtype).reshape(shape)


class RecyclingPool:
    """Batch arrays reused once nothing outside the pool refers to them any more.

    Writing into freshly allocated memory costs a page fault per 4 KiB; a gathered batch instead
    reuses an array of the same shape whose consumer has let go of it (its reference count is
    back to the pool's own). An array anybody still holds — a training loop keeping batches, a
    torch tensor made from it, a view of it — is never handed out again.
    """

    def __init__(self, per_shape: int = 4) -> None:
        self.per_shape = per_shape
        self._free: dict[tuple, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._idle = self._idle_refcounts()

    @staticmethod
    def _idle_refcounts() -> tuple[int, int]:
        """The reference counts of an entry held only by the pool, as :meth:`empty`'s loop sees
        them, measured on this interpreter (interpreters that borrow loop references report
        less, and a held array must never look idle). An entry is the owning buffer and its
        aligned view: a consumer holding the view shows on the view, one holding a view of the
        view shows on the buffer (numpy points every view at the owner)."""
        owner = np.empty(ALIGN, np.uint8)
        probe = [(owner, owner[:0])]
        del owner
        for buf, arr in probe:
            return sys.getrefcount(buf), sys.getrefcount(arr)
        raise AssertionError("unreachable")

    def empty(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        """An ``ALIGN``-byte aligned array of ``shape``: a recycled one nobody holds, else a new one
        (small arrays are always new: the allocator reuses their memory without page faults, and
        a batch of many small columns would only search the pool in vain)."""
        dtype = np.dtype(dtype)
        if math.prod(shape) * dtype.itemsize < SMALL_BYTES:
            return aligned_empty(shape, dtype)[1]
        entries = self._free.setdefault((shape, dtype.str), [])
        for buf, arr in entries:
            if (sys.getrefcount(buf), sys.getrefcount(arr)) == self._idle:  # nobody but the pool holds it
                return arr
        entry = aligned_empty(shape, dtype)
        if len(entries) < self.per_shape:
            entries.append(entry)
        return entry[1]
