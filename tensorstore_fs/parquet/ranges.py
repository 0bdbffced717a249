"""Byte ranges of a Parquet file: where column chunks lie, and a file served from fetched ranges.

A remote shard is read through a :class:`RangedFile`: a random-access file for pyarrow whose bytes
come from ranges fetched ahead of time (:mod:`tensorstore_fs.read.readahead` attaches them as
futures) and, for anything not fetched ahead, from one ranged request of exactly what pyarrow
asks for. Its size comes from the manifest, so opening it costs no request; the footer is one
ranged request for the file's tail (:data:`TAIL_BYTES`).
"""

from __future__ import annotations

import bisect
import threading
from concurrent.futures import Future, wait
from typing import Any, Callable, Sequence

import pyarrow.parquet as pq

from ..errors import TensorstoreError

__all__ = ["MERGE_GAP", "PIECE_BYTES", "TAIL_BYTES", "RangedFile", "chunk_ranges", "merge_ranges", "split_ranges"]

TAIL_BYTES = 64 * 1024  # the footer read: pyarrow reads this much of a file's end first
MERGE_GAP = 8 * 1024  # ranges this close are fetched as one (a request costs more than the gap)
PIECE_BYTES = 16 * 2**20  # a fetch larger than this is split into parallel requests


def chunk_ranges(md: pq.FileMetaData, rg: int, columns: Sequence[str]) -> list[tuple[int, int]]:
    """``(start, end)`` byte ranges of the column chunks of ``columns`` in row group ``rg`` of a
    file with footer ``md`` (dictionary pages included), sorted and merged where at most
    :data:`MERGE_GAP` apart. Every storage column is a single Parquet leaf."""
    wanted = set(columns)
    meta = md.row_group(rg)
    ranges = []
    for i, name in enumerate(md.schema.to_arrow_schema().names):
        if name in wanted:
            c = meta.column(i)
            start = c.data_page_offset
            if c.has_dictionary_page and c.dictionary_page_offset is not None and 0 < c.dictionary_page_offset < start:
                start = c.dictionary_page_offset
            ranges.append((start, start + c.total_compressed_size))
    return merge_ranges(ranges)


def merge_ranges(ranges: Sequence[tuple[int, int]], gap: int = MERGE_GAP) -> list[tuple[int, int]]:
    """Sorted ``ranges`` with those at most ``gap`` bytes apart (or overlapping) joined."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if end <= start:
            continue
        if out and start <= out[-1][1] + gap:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def split_ranges(ranges: Sequence[tuple[int, int]], piece: int = PIECE_BYTES) -> list[tuple[int, int]]:
    """``ranges`` cut into near-equal pieces of at most ``piece`` bytes (fetched in parallel)."""
    out = []
    for start, end in ranges:
        n = max(1, -(-(end - start) // piece))
        step = -(-(end - start) // n)
        out += [(s, min(end, s + step)) for s in range(start, end, step)]
    return out


class RangedFile:
    """A read-only random-access file of ``size`` bytes for pyarrow, served from attached byte
    ranges (each a future of its bytes) and, where a read is not covered, from ``get(start,
    end)`` (one ranged request: a *miss*, counted in :attr:`misses` and :attr:`missed_bytes`).

    Parameters
    ----------
    name : str
        How messages name the file.
    size : int
        The file's size (from the manifest).
    get : callable
        ``get(start, end) -> bytes``: one ranged read of the file.
    pending : callable, optional
        Futures that may still attach ranges (read-ahead being scheduled): an uncovered read waits
        for them before it becomes a miss, so nothing is requested twice.
    keep_open : bool
        ``close()`` frees nothing (the file belongs to a read-ahead, not to the reader closing it).
    """

    def __init__(self, name: str, size: int, get: Callable[[int, int], bytes], *,
                 pending: Callable[[], list[Future]] | None = None, keep_open: bool = False) -> None:
        self.name = name
        self._pending = pending
        self._keep_open = keep_open
        self._size = int(size)
        self._get = get
        self._pos = 0
        self._lock = threading.Lock()
        self._starts: list[int] = []  # sorted starts of the attached ranges
        self._ranges: dict[int, tuple[int, Future]] = {}  # start -> (end, future of the bytes)
        self.closed = False
        self.misses = 0
        self.missed_bytes = 0
        self.metadata: Any = None  # the parsed footer, once a reader has it (saves parsing it again)

    def __repr__(self) -> str:
        return f"RangedFile({self.name!r})"

    # -- ranges ----------------------------------------------------------------------------------------
    def attach(self, start: int, end: int, data: Future) -> None:
        """Serve ``[start, end)`` from the future ``data`` (its bytes, or the error of fetching them)."""
        with self._lock:
            if start not in self._ranges:
                bisect.insort(self._starts, start)
            self._ranges[start] = (end, data)

    def detach(self, start: int) -> None:
        """Forget the range attached at ``start`` (its bytes are freed once no array views them)."""
        with self._lock:
            if self._ranges.pop(start, None) is not None:
                self._starts.pop(bisect.bisect_left(self._starts, start))

    def attached(self) -> list[tuple[int, int]]:
        """The attached ranges, sorted."""
        with self._lock:
            return [(s, self._ranges[s][0]) for s in self._starts]

    def _covering(self, start: int, end: int) -> list[tuple[int, int, Future]] | None:
        """Attached ranges that together cover ``[start, end)``, in order; None if they do not."""
        with self._lock:
            i = bisect.bisect_right(self._starts, start) - 1
            parts, at = [], start
            while at < end and 0 <= i < len(self._starts):
                s = self._starts[i]
                e, fut = self._ranges[s]
                if s > at or e <= at:
                    return None
                parts.append((s, e, fut))
                at = e
                i += 1
            return parts if at >= end else None

    def read_at(self, start: int, n: int) -> Any:
        """``n`` bytes at ``start`` (fewer at the end of the file): a zero-copy view where one
        attached range holds them."""
        end = min(self._size, start + max(0, n))
        if end <= start:
            return b""
        parts = self._covering(start, end)
        if parts is None and self._pending is not None:
            pending = self._pending()
            wait(pending)
            for task in pending:  # the storage failed for read-ahead: the same error, not a second wait
                if not task.cancelled() and isinstance(task.exception(), TensorstoreError):
                    raise task.exception()  # type: ignore[misc]
            parts = self._covering(start, end)  # also what a task finished since the first look attached
        views = []
        for s, e, fut in parts or ():
            if not fut.cancelled() and fut.done() and isinstance(fut.exception(), TensorstoreError):
                raise fut.exception()  # type: ignore[misc]
            try:
                data = memoryview(fut.result())
            except TensorstoreError:
                raise
            except Exception:  # noqa: BLE001 - a cancelled (or otherwise failed) fetch ahead: read it directly
                parts = None
                break
            views.append(data[max(start, s) - s:min(end, e) - s])
        if parts is None:
            return self._miss(start, end)
        return views[0] if len(views) == 1 else b"".join(views)

    def _miss(self, start: int, end: int) -> Any:
        """Read ``[start, end)`` with one request for the part no attached range holds: the end
        of a read may lie in the footer read (kept attached: it is read before anything else)."""
        with self._lock:
            i = bisect.bisect_right(self._starts, end - 1) - 1
            s = self._starts[i] if i >= 0 else -1
            held = self._ranges[s] if i >= 0 else None
        cut = end
        if held is not None and start < s and held[0] >= end and held[1].done() and not held[1].cancelled() \
                and held[1].exception() is None:
            cut = s
        self.misses += 1
        self.missed_bytes += cut - start
        data = self._get(start, cut)
        if cut < end:
            data = bytes(data) + bytes(memoryview(held[1].result())[:end - cut])  # type: ignore[index]
        elif end == self._size and start >= self._size - TAIL_BYTES and not self._keep_open:
            done: Future = Future()
            done.set_result(data)
            self.attach(start, end, done)  # the footer read: later reads of the last chunks use it
        return data

    # -- the file interface pyarrow uses --------------------------------------------------------------
    def read_buffer(self, n: int = -1) -> Any:
        data = self.read_at(self._pos, self._size - self._pos if n is None or n < 0 else n)
        self._pos += len(data)
        return data

    def read(self, n: int = -1) -> bytes:
        return bytes(self.read_buffer(n))

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        if self._keep_open:
            return
        self.closed = True
        with self._lock:
            self._starts, self._ranges = [], {}

    def __enter__(self) -> "RangedFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
