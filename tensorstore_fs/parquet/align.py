"""Write a row group's first tensor column with its values at a 64-byte aligned file offset.

A fixed-shape tensor column chunk is one plain data page (:mod:`tensorstore_fs.parquet.pages`): its values
are ``rows * row_nbytes`` raw bytes right after a page header of 20-odd bytes, so where they start
depends on everything written before them. Readers that hand out the file's own bytes as tensors
(the tf.data adapter's native gather, memory-mapped NumPy views) need them aligned: TensorFlow
refuses tensors whose data is not 64-byte aligned, and SIMD code reads aligned rows faster.

The writer puts one fixed-shape tensor column first in every row group and writes zero bytes in
front of the row group, so that this column's values begin at a multiple of :data:`ALIGNMENT`:

* into a local file (pyarrow writes it natively), the zero bytes go straight to the file before
  ``write_table``; pyarrow takes its offsets from the file's position, so its footer is right.
  The page header's length comes from :func:`header_length`.
* into a Python sink (object stores through fsspec), pyarrow counts positions itself, so
  :class:`AligningStream` sits in between: it reads the page header as pyarrow writes it, puts the
  zero bytes in front, and at the end rewrites the footer's offsets (:mod:`tensorstore_fs.parquet.thrift`)
  to where the chunks really are.

The result is a plain Parquet file with unused bytes between row groups, the same thing parquet-mr
writes when it pads row groups to file-system blocks: every Parquet reader finds column chunks by
the footer's offsets, never by adjacency. Readers check alignment where they rely on it, so a file
that is not aligned (another writer, an older version) reads the same, only with a copy.
"""

from __future__ import annotations

import bisect
import functools
import logging
from collections import deque
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .thrift import I64, LIST, STRUCT, decode_struct, encode_struct
from ..errors import TensorstoreError
from .pages import is_plain_page, page_header

__all__ = ["ALIGNMENT", "AligningStream", "header_length", "padding"]

logger = logging.getLogger(__name__)

ALIGNMENT = 64  # TensorFlow's (and AVX-512's) alignment
_MAX_HEADER = 1024  # a tensor page header has no statistics: 20-40 bytes
_MAGIC = b"PAR1"

# PageHeader: uncompressed_page_size, compressed_page_size, data_page_header; DataPageHeader: num_values
_PH_UNCOMPRESSED, _PH_COMPRESSED, _PH_DATA_PAGE, _DPH_NUM_VALUES = 2, 3, 5, 1
# footer fields that hold absolute file offsets: (struct, field id)
_ROW_GROUPS, _COLUMNS, _RG_OFFSET = 4, 1, 5
_CC_FILE_OFFSET, _CC_META, _CC_OFFSET_INDEX, _CC_COLUMN_INDEX = 2, 3, 4, 6
_CM_OFFSETS = (9, 10, 11, 14)  # data_page_offset, index_page_offset, dictionary_page_offset, bloom_filter_offset


@functools.lru_cache(maxsize=64)
def _header_template(row_nbytes: int, data_page_size: int) -> bytes:
    """The page header pyarrow writes for 2 rows of a required ``fixed_size_binary(row_nbytes)``
    column, uncompressed, without dictionary or statistics, as one page."""
    field = pa.field("v", pa.binary(row_nbytes), nullable=False)
    values = pa.FixedSizeBinaryArray.from_buffers(field.type, 2, [None, pa.py_buffer(bytes(2 * row_nbytes))])
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, pa.schema([field]), compression="none", use_dictionary=False, write_statistics=False,
                          data_page_size=data_page_size) as writer:
        writer.write_table(pa.table([values], schema=writer.schema), row_group_size=2)
    data = sink.getvalue().to_pybytes()
    _, end = decode_struct(data, 4)
    return data[4:end]


def header_length(rows: int, row_nbytes: int, data_page_size: int) -> int:
    """Length of the page header pyarrow writes for ``rows`` values of a required
    ``fixed_size_binary(row_nbytes)`` column, uncompressed and without statistics, as one page.

    A 2-row chunk is written once per row size (cheap) and its header re-encoded with this
    chunk's sizes and value count: exact for whatever else the installed pyarrow puts in it.
    """
    tree, _ = decode_struct(_header_template(row_nbytes, data_page_size))
    for f in tree:
        if f[0] in (_PH_UNCOMPRESSED, _PH_COMPRESSED):
            f[2] = rows * row_nbytes
        elif f[0] == _PH_DATA_PAGE:
            for g in f[2]:
                if g[0] == _DPH_NUM_VALUES:
                    g[2] = rows
    return len(encode_struct(tree))


def padding(position: int, header: int, alignment: int = ALIGNMENT) -> int:
    """Zero bytes to write at ``position`` so that a page with a ``header``-byte header that
    follows them has its values at a multiple of ``alignment``."""
    return (-(position + header)) % alignment


class AligningStream:
    """A write-only file object for ``pyarrow.parquet.ParquetWriter`` that aligns chunk values.

    Parameters
    ----------
    inner : file-like
        Where the bytes go (anything with ``write``).
    alignment : int
        Values of expected chunks start at multiples of this many bytes.

    Before each ``write_table`` call :meth:`expect` the value sizes of the row group's leading
    fixed-shape columns; before ``ParquetWriter.close`` call :meth:`footer_next`, and after it
    :meth:`finish`, which writes the footer with corrected offsets.
    """

    def __init__(self, inner: Any, alignment: int = ALIGNMENT) -> None:
        if alignment < 1:
            raise ValueError("alignment must be >= 1")
        self._inner = inner
        self._alignment = alignment
        self._received = 0  # bytes pyarrow wrote: its idea of the file position
        self._seen = 0  # pyarrow's position of the next byte not yet passed on or held
        self._written = 0  # bytes written to inner
        self._expect: deque[int] = deque()
        self._head = bytearray()  # page header bytes held until they parse
        self._head_at = 0  # pyarrow's position of the held header
        self._through = 0  # value bytes to pass on before the next expected header
        self._footer: bytearray | None = None
        self._points: list[int] = []  # pyarrow positions where padding went in, ascending
        self._shift: list[int] = []  # total padding up to and including each point
        self.closed = False

    # -- file object --------------------------------------------------------------------------------
    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._received

    def flush(self) -> None:
        flush = getattr(self._inner, "flush", None)
        if flush is not None:
            flush()

    def close(self) -> None:
        """pyarrow may call this when it closes; the footer is written by :meth:`finish`."""

    def write(self, data: Any) -> int:
        mv = memoryview(data).cast("B")
        self._received += len(mv)
        if self._footer is not None:
            self._footer += mv
        else:
            self._feed(mv)
        return len(mv)

    # -- control ------------------------------------------------------------------------------------
    @property
    def padded(self) -> int:
        """Zero bytes inserted so far."""
        return self._shift[-1] if self._shift else 0

    def expect(self, value_sizes: list[int]) -> None:
        """The next column chunks pyarrow writes are single plain pages of these value sizes."""
        self._release_head()
        self._expect = deque(int(s) for s in value_sizes)
        self._through = 0

    def footer_next(self) -> None:
        """Everything pyarrow writes from now on is the file's tail (footer)."""
        self._release_head()
        self._expect.clear()
        self._footer = bytearray()

    def finish(self) -> None:
        """Write the footer with its offsets moved past the padding."""
        if self._footer is None or self.closed:
            return
        self.closed = True
        self._write_footer(bytes(self._footer))

    def _write_footer(self, tail: bytes) -> None:
        if not self._points:
            self._emit(tail)
            return
        if len(tail) < 12 or tail[-4:] != _MAGIC:
            raise TensorstoreError("internal error: the Parquet writer's tail is not a footer")
        size = int.from_bytes(tail[-8:-4], "little")
        before, meta = tail[:-8 - size], tail[-8 - size:-8]
        tree, end = decode_struct(meta)
        if end != size:
            raise TensorstoreError("internal error: the Parquet footer did not decode to its length")
        self._patch_file(tree)
        new = encode_struct(tree)
        self._emit(before)
        self._emit(new)
        self._emit(len(new).to_bytes(4, "little") + _MAGIC)

    # -- bytes --------------------------------------------------------------------------------------
    def _emit(self, data: Any) -> None:
        if len(data):
            self._inner.write(data)
            self._written += len(data)

    def _feed(self, mv: memoryview) -> None:
        pos, n = 0, len(mv)
        while pos < n:
            if self._through:
                k = min(self._through, n - pos)
                self._emit(mv[pos:pos + k])
                self._through -= k
                self._seen += k
                pos += k
            elif not self._expect:
                self._emit(mv[pos:])
                self._seen += n - pos
                return
            else:
                if not self._head:
                    self._head_at = self._seen
                take = min(n - pos, _MAX_HEADER - len(self._head))
                self._head += mv[pos:pos + take]
                self._seen += take
                pos += take
                rest = self._place_head()
                if rest is not None:
                    self._seen -= len(rest)
                    self._feed(memoryview(rest))

    def _place_head(self) -> bytes | None:
        """Try to parse the held header: pad and write it, returning the bytes after it; None while
        it is incomplete."""
        try:
            header, length = page_header(bytes(self._head))
        except ValueError:
            if len(self._head) < _MAX_HEADER:
                return None  # more bytes to come
            header, length = {}, 0
        want = self._expect[0]
        if not is_plain_page(header, want) or length <= 0:
            # not the page we were told of: write the rest of this row group as pyarrow made it
            logger.debug("not aligning a column chunk at %d: unexpected page header %s", self._head_at, header)
            self._expect.clear()
            rest = bytes(self._head)
            self._head.clear()
            return rest
        self._expect.popleft()
        pad = padding(self._written, length, self._alignment)
        if pad:
            self._emit(bytes(pad))
            self._points.append(self._head_at)
            self._shift.append(self.padded + pad)
        self._emit(bytes(self._head[:length]))
        rest = bytes(self._head[length:])
        self._head.clear()
        self._through = want
        return rest

    def _release_head(self) -> None:
        if self._head:
            self._emit(bytes(self._head))
            self._head.clear()

    # -- footer -------------------------------------------------------------------------------------
    def _moved(self, offset: int) -> int:
        i = bisect.bisect_right(self._points, offset)
        return offset + (self._shift[i - 1] if i else 0)

    def _patch(self, fields: list[list[Any]], ids: tuple[int, ...]) -> None:
        for f in fields:
            if f[0] in ids and f[1] == I64 and f[2] > 0:
                f[2] = self._moved(f[2])

    def _patch_file(self, tree: list[list[Any]]) -> None:
        for fid, ftype, value in tree:
            if fid == 8:  # encryption_algorithm: an encrypted footer is not ours to rewrite
                raise TensorstoreError("internal error: cannot align an encrypted Parquet file")
            if fid != _ROW_GROUPS or ftype != LIST:
                continue
            for group in value[1]:
                self._patch(group, (_RG_OFFSET,))
                for gid, gtype, gval in group:
                    if gid != _COLUMNS or gtype != LIST:
                        continue
                    for chunk in gval[1]:
                        self._patch(chunk, (_CC_FILE_OFFSET,))
                        for cid, ctype, cval in chunk:
                            if cid in (_CC_OFFSET_INDEX, _CC_COLUMN_INDEX):
                                raise TensorstoreError("internal error: cannot align a Parquet file with a page index")
                            if cid == _CC_META and ctype == STRUCT:
                                self._patch(cval, _CM_OFFSETS)
