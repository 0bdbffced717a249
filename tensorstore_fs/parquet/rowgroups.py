"""A shard file opened for reading, and the one cache of open files of a process.

:class:`OpenFile` is the only place that locates, maps and decodes a row group's column chunk:

* **locate** — :meth:`OpenFile.values_offset`: the file offset of a fixed-shape tensor column's
  values where the chunk is one plain, uncompressed page (:mod:`tensorstore_fs.parquet.pages`);
* **map** — :meth:`OpenFile.values` (a read-only view of those bytes in a kept map of the whole
  file) and :meth:`OpenFile.private_values` (a writable copy-on-write map of just those bytes);
* **decode** — :meth:`OpenFile.read_row_group` (pyarrow, with its thread pool only where it pays).

:data:`FILES` keeps the files readers handed back (:meth:`FileCache.checkout` /
:meth:`FileCache.checkin`): local shards only, the most recent ``OPEN_FILES`` of them and at most
``OPEN_FILE_BYTES`` of pyarrow's maps. A checked-out file is used by one reader at a time. Shard
files never change once committed, but a path may be replaced by hand: an entry is reused only
while the file's inode, size and modification time are the ones it was opened with.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import weakref
from collections import OrderedDict
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CorruptDatasetError, DatasetNotFoundError, TensorstoreError
from .ranges import RangedFile
from .pages import plain_values_offset

__all__ = ["FILES", "FileCache", "OpenFile", "column_bytes", "private_view", "row_bytes", "use_threads"]

OPEN_FILES = 8  # local files the process keeps open between reads (least recently used go first)
# ... and at most this many bytes of pyarrow's maps of them: pages a read touched stay in the
# process's resident set (file pages, shared with the page cache) until the map is closed
OPEN_FILE_BYTES = 256 * 2**20
HELD_FILES = 4  # files one planned stream holds checked out between its batches
RELEASE_BYTES = 128 << 20  # bytes viewed through the kept whole-file maps between releases of their pages
THREADED_READ_BYTES = 64 << 10  # decoded bytes of a row group read from which pyarrow's threads pay

_GRANULE = mmap.ALLOCATIONGRANULARITY


# -- footer arithmetic (any open ParquetFile) --------------------------------------------------------
_LEAF_NAMES: "weakref.WeakKeyDictionary[Any, list[str]]" = weakref.WeakKeyDictionary()


def leaf_names(pf: pq.ParquetFile) -> list[str]:
    """The storage column owning each Parquet leaf, by leaf index (every storage column is a single
    leaf). Kept per open file: ``schema_arrow`` is rebuilt on every access, and a leaf's dotted
    ``path_in_schema`` cannot tell field ``a.b`` from a leaf ``b`` inside field ``a``."""
    names = _LEAF_NAMES.get(pf)
    if names is None:
        names = _LEAF_NAMES[pf] = list(pf.schema_arrow.names)
    return names


def column_bytes(pf: pq.ParquetFile, rg: int, columns: Sequence[str]) -> int:
    """Stored bytes of ``columns`` in row group ``rg``."""
    wanted = set(columns)
    meta = pf.metadata.row_group(rg)
    return sum(meta.column(i).total_compressed_size for i, name in enumerate(leaf_names(pf)) if name in wanted)


def row_bytes(pf: pq.ParquetFile, rg: int, columns: Sequence[str]) -> float:
    """Uncompressed bytes per row of ``columns`` in row group ``rg`` (from the footer)."""
    meta = pf.metadata.row_group(rg)
    if not meta.num_rows:
        return 0.0
    wanted = set(columns)
    total = sum(meta.column(i).total_uncompressed_size for i, name in enumerate(leaf_names(pf)) if name in wanted)
    return total / meta.num_rows


def use_threads(pf: pq.ParquetFile, rg: int, columns: Sequence[str]) -> bool:
    """Whether reading ``columns`` of row group ``rg`` is worth pyarrow's thread pool: it decodes
    columns in parallel, so never for one column, and its hand-off costs more than it saves on
    small reads (it doubled the time of reading one small column here)."""
    if len(columns) < 2:
        return False
    return row_bytes(pf, rg, columns) * pf.metadata.row_group(rg).num_rows >= THREADED_READ_BYTES


# -- maps ------------------------------------------------------------------------------------------
def private_view(path: str, offset: int, length: int) -> np.ndarray:
    """A writable byte view of ``length`` bytes of ``path`` at ``offset`` through a private
    copy-on-write map of just that range (unmapped when the last view of it goes; writes never
    reach the file)."""
    start = offset - offset % _GRANULE
    fd = os.open(path, os.O_RDONLY)
    try:
        if offset + length > os.fstat(fd).st_size:
            raise OSError(f"{path}: {length} bytes at {offset} lie beyond the end of the file (was it replaced?)")
        mm = mmap.mmap(fd, offset + length - start, flags=mmap.MAP_PRIVATE,
                       prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
    finally:
        os.close(fd)  # the mapping stays valid without the descriptor
    return np.frombuffer(mm, dtype=np.uint8, count=length, offset=offset - start)


def _identity(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class OpenFile:
    """One shard file opened for reading (the Parquet reader and the maps are made on first use).

    Parameters
    ----------
    name : str
        How messages name the file (its URL).
    opener : callable
        Opens the file's source: a ``pyarrow.MemoryMappedFile`` for a local file, an fsspec file
        otherwise (and raises the library's errors for a missing file).
    path : str, optional
        The absolute local path (None for object stores): the key in :data:`FILES`.
    """

    def __init__(self, name: str, opener: Callable[[], Any], path: str | None = None) -> None:
        self.name = name
        self.path = path
        self.identity = _identity(path) if path is not None else None
        self.checked: Any = False  # the expectation the file was found to meet (see check)
        self._opener = opener
        self._source: Any = None
        self._pf: pq.ParquetFile | None = None
        self._map: mmap.mmap | None = None
        self._offsets: dict[tuple[int, str], int | None] = {}

    @classmethod
    def local(cls, path: str) -> "OpenFile":
        """A local file by path (for readers that only map located values)."""
        return cls(path, lambda: pa.memory_map(path, "r"), path)

    def __repr__(self) -> str:
        return f"OpenFile({self.name!r})"

    # -- opening -----------------------------------------------------------------------------------
    @property
    def source(self) -> Any:
        if self._source is None:
            self._source = self._opener()
        return self._source

    @property
    def mapped(self) -> bool:
        """Whether pyarrow reads the file through a memory map (a local file)."""
        return isinstance(self.source, pa.MemoryMappedFile)

    @property
    def parquet(self) -> pq.ParquetFile:
        """The parsed footer. A memory map is read without pyarrow's pre-buffering, which only pays
        where reads have latency to hide: for a mapped file it hands every column chunk to the I/O
        thread pool, which made small reads an order of magnitude slower. So is a
        :class:`~tensorstore_fs.parquet.ranges.RangedFile`, which hides latency itself."""
        if self._pf is None:
            source = self.source
            try:
                # a RangedFile fetches its ranges itself (ahead, or exactly what is read): pyarrow's
                # pre-buffering would coalesce chunks of several row groups into one read that
                # spans the ranges fetched ahead. One that parsed its footer already hands it on.
                ranged = isinstance(source, RangedFile)
                self._pf = pq.ParquetFile(source, pre_buffer=not (ranged or isinstance(source, pa.MemoryMappedFile)),
                                          metadata=source.metadata if ranged else None)
            except TensorstoreError:  # a storage failure is not damage
                raise
            except (pa.ArrowInvalid, OSError) as e:
                self.close()
                if isinstance(e, FileNotFoundError):
                    raise DatasetNotFoundError(f"{self.name}: shard file is missing") from None
                raise CorruptDatasetError(f"{self.name}: not a readable Parquet file: {e}") from None
        return self._pf

    @property
    def map(self) -> mmap.mmap:
        """A read-only map of the whole (local) file, kept while the file is open."""
        if self._map is None:
            if self.path is None:
                raise ValueError(f"{self.name} is not a local file")
            fd = os.open(self.path, os.O_RDONLY)
            try:
                self._map = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            finally:
                os.close(fd)  # the mapping stays valid without the descriptor
        return self._map

    def kept_bytes(self) -> int:
        """Bytes of pyarrow's map of the file (what a kept file may hold resident)."""
        src = self._source
        return src.size() if isinstance(src, pa.MemoryMappedFile) and not src.closed else 0

    def close(self) -> None:
        """Close the file. Arrays read or viewed from it stay valid (they hold their mapping)."""
        if self._source is not None:
            self._source.close()
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # views of it live on: it is unmapped when the last one goes
                pass
        self._source = self._pf = self._map = None

    # -- checking ----------------------------------------------------------------------------------
    def check(self, row_group_rows: Sequence[int], rows: int, expected: pa.Schema) -> None:
        """Refuse a file that is not the one its manifest entry records (replaced or truncated
        after the commit): its row groups must hold ``row_group_rows``, since every reader locates
        rows by that layout, and it must have every column of ``expected`` (the dataset's storage
        schema) with that type, so that nothing is decoded as what it is not. Checked once per
        open file (shard files never change, and open files are kept across reads)."""
        key = (tuple(row_group_rows), rows, expected)
        if self.checked and self.checked == key:  # checked against this very expectation (another
            return  # manifest naming the same file, e.g. a rewritten one, is checked again)
        md = self.parquet.metadata
        counts = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        if counts != list(row_group_rows):
            raise CorruptDatasetError(
                f"{self.name}: file has {md.num_rows} rows in {md.num_row_groups} row groups, "
                f"manifest says {rows} rows in {len(row_group_rows)}"
            )
        got = {f.name: f.type for f in self.parquet.schema_arrow}
        for f in expected:
            have = got.get(f.name)
            if have is None:
                raise CorruptDatasetError(f"{self.name}: no column {f.name!r} in the file (the schema stores it as {f.type})")
            if not _same_storage_type(f.type, have):
                raise CorruptDatasetError(f"{self.name}: column {f.name!r} is {have} in the file, the schema stores {f.type}")
        self.checked = key

    # -- decoding ----------------------------------------------------------------------------------
    def read_row_group(self, rg: int, columns: Sequence[str]) -> pa.Table:
        """Decode ``columns`` of row group ``rg``; a chunk pyarrow cannot decode is a
        :class:`~tensorstore_fs.CorruptDatasetError` naming the file and row group."""
        pf = self.parquet
        cols = list(columns)
        try:
            return pf.read_row_group(rg, columns=cols, use_threads=use_threads(pf, rg, cols))
        except TensorstoreError:  # a storage failure is not damage
            raise
        except (pa.ArrowInvalid, OSError) as e:
            raise CorruptDatasetError(f"{self.name}: row group {rg} unreadable: {e}") from None

    # -- locating and mapping ------------------------------------------------------------------------
    def values_offset(self, rg: int, column: str, row_nbytes: int) -> int | None:
        """File offset of the values of ``column`` in row group ``rg`` where they are one plain,
        uncompressed run of ``rows * row_nbytes`` bytes in a local file; None otherwise (the chunk
        is then decoded). Parsed once per chunk."""
        key = (rg, column)
        if key not in self._offsets:
            offset = None
            if self.path is not None and self.mapped:
                pf = self.parquet
                index = pf.schema_arrow.get_field_index(column)
                if index >= 0:
                    meta = pf.metadata.row_group(rg)
                    if meta.num_rows:
                        offset = plain_values_offset(self.source.read_at, meta.column(index), meta.num_rows, row_nbytes)
            self._offsets[key] = offset
        return self._offsets[key]

    def values(self, rg: int, column: str, row_nbytes: int) -> np.ndarray | None:
        """The located values of a chunk (:meth:`values_offset`) as a read-only ``(rows,
        row_nbytes)`` uint8 view of the kept map of the file; None where they are not located."""
        offset = self.values_offset(rg, column, row_nbytes)
        if offset is None:
            return None
        rows = self.parquet.metadata.row_group(rg).num_rows
        return np.frombuffer(self.map, dtype=np.uint8, count=rows * row_nbytes, offset=offset).reshape(rows, row_nbytes)

    def private_values(self, rg: int, column: str, row_nbytes: int) -> np.ndarray | None:
        """The located values of a chunk as a writable private copy-on-write map of just those
        bytes (flat uint8; writes stay private); None where they are not located."""
        offset = self.values_offset(rg, column, row_nbytes)
        if offset is None:
            return None
        assert self.path is not None  # located values are in local files
        return private_view(self.path, offset, self.parquet.metadata.row_group(rg).num_rows * row_nbytes)


def _same_storage_type(want: pa.DataType, have: pa.DataType) -> bool:
    """Whether a file column of type ``have`` decodes as ``want``: equal, the other width of a
    string / bytes scalar column (their offsets are never read directly), or a shape column whose
    list items are declared non-nullable (they are never null)."""
    if want == have:
        return True
    if pa.types.is_fixed_size_list(want) and pa.types.is_fixed_size_list(have):
        return want.list_size == have.list_size and want.value_type == have.value_type
    strings, binaries = (pa.string(), pa.large_string()), (pa.binary(), pa.large_binary())
    return (want in strings and have in strings) or (want == pa.binary() and have in binaries)


class FileCache:
    """Open files handed back by readers, for the next reader of the same file (see module doc)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._idle: OrderedDict[str, OpenFile] = OrderedDict()
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._viewed = 0

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """The cache's lock; a forked child starts with nothing kept (and a new lock)."""
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            yield

    def checkout(self, path: str | None, open_file: Callable[[], OpenFile]) -> OpenFile:
        """The kept file at local ``path`` (when it is still the same file), else ``open_file()``.
        The caller uses it alone until :meth:`checkin`."""
        if path is not None:
            with self._guard():
                hit = self._idle.pop(path, None)
            if hit is not None:
                if hit.identity is not None and hit.identity == _identity(path):
                    return hit
                hit.close()  # replaced on disk since it was opened
        return open_file()

    def checkin(self, f: OpenFile) -> None:
        """Hand back a checked-out file: a local one is kept for the next reader (the most recent
        ``OPEN_FILES``, within ``OPEN_FILE_BYTES``), others are closed."""
        if f.path is None or f.identity is None or f.kept_bytes() > OPEN_FILE_BYTES:
            f.close()
            return
        with self._guard():
            drop = [self._idle.pop(f.path)] if f.path in self._idle else []  # another reader's copy came back first
            self._idle[f.path] = f
            while len(self._idle) > OPEN_FILES or sum(x.kept_bytes() for x in self._idle.values()) > OPEN_FILE_BYTES:
                drop.append(self._idle.popitem(last=False)[1])
        for old in drop:
            old.close()

    @contextlib.contextmanager
    def borrow(self, path: str) -> Iterator[OpenFile]:
        """The local file ``path`` checked out for the ``with`` block."""
        f = self.checkout(path, lambda: OpenFile.local(path))
        try:
            yield f
        finally:
            self.checkin(f)

    def viewed(self, nbytes: int) -> None:
        """Count bytes copied out of kept whole-file maps; every ``RELEASE_BYTES`` their pages
        leave this process's page tables (not the page cache): resident memory stays flat instead
        of collecting the files' pages, and the cost (a TLB flush) is paid once per that many
        bytes rather than per batch."""
        with self._guard():
            self._viewed += nbytes
            if self._viewed < RELEASE_BYTES:
                return
            self._viewed = 0
            for f in self._idle.values():
                if f._map is not None:
                    f._map.madvise(mmap.MADV_DONTNEED)

    def clear(self) -> None:
        """Close every kept file."""
        with self._guard():
            drop, self._idle = list(self._idle.values()), OrderedDict()
        for f in drop:
            f.close()

    def kept(self) -> list[str]:
        """Paths of the kept files, least recently used first."""
        with self._guard():
            return list(self._idle)


FILES = FileCache()  # the process's one cache of open files
