"""Locate the raw values of a fixed-shape tensor column chunk inside its Parquet file.

tensorstore_fs writes tensor columns as ``required fixed_len_byte_array``, uncompressed, PLAIN,
without dictionary — so when a row group's column chunk is one data page, its values are one
contiguous run of ``rows * nbytes`` bytes right after the page header. Reading them through a
memory map gives a zero-copy view of the page cache: a shuffled batch is then gathered straight
from the file (one copy) instead of decoding the row group first (two copies).

Only the Parquet page header is parsed here (Thrift compact protocol, a handful of fields); any
chunk that is not exactly that simple layout returns ``None`` and the caller decodes it with
pyarrow as usual, so this is an optimisation that can never change results.
"""

from __future__ import annotations

from typing import Any

__all__ = ["locatable", "plain_values_offset"]

_DATA_PAGE = 0


def locatable(field: Any) -> bool:
    """Whether readers may look for ``field``'s raw values in the files (the one rule every reader
    uses): fixed-shape, non-nullable tensors (a null row has no bytes of its own), not ``bool``
    (stored one byte per element and decoded, never handed out as stored bytes)."""
    return bool(field.is_fixed_tensor and not field.nullable and field.dtype != "bool")
_PLAIN = 0


class _Compact:
    """Just enough of Thrift's compact protocol to read a PageHeader."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise ValueError("truncated page header")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise ValueError("bad varint")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def fields(self) -> Any:
        """Yield ``(field id, type)`` of a struct until its stop byte."""
        last = 0
        while True:
            head = self.byte()
            if head == 0:
                return
            ftype = head & 0x0F
            delta = head >> 4
            fid = last + delta if delta else self.zigzag()
            last = fid
            yield fid, ftype

    def skip(self, ftype: int) -> None:
        if ftype in (1, 2):  # boolean true / false: no payload
            return
        if ftype == 3:  # byte
            self.byte()
        elif ftype in (4, 5, 6):  # i16, i32, i64
            self.varint()
        elif ftype == 7:  # double
            self.pos += 8
        elif ftype == 8:  # binary
            size = self.varint()  # (``self.pos += self.varint()`` would read pos before the varint moves it)
            self.pos += size
        elif ftype in (9, 10):  # list, set
            head = self.byte()
            size = head >> 4 if head >> 4 != 15 else self.varint()
            for _ in range(size):
                self.skip(head & 0x0F)
        elif ftype == 11:  # map
            size = self.varint()
            if size:
                kv = self.byte()
                for _ in range(size):
                    self.skip(kv >> 4)
                    self.skip(kv & 0x0F)
        elif ftype == 12:  # struct
            for _, t in self.fields():
                self.skip(t)
        else:
            raise ValueError(f"unknown thrift type {ftype}")


def _page_header(data: bytes) -> tuple[dict[str, int], int]:
    """Parse a PageHeader; return its interesting fields and its length in bytes."""
    r = _Compact(data)
    out: dict[str, int] = {}
    for fid, ftype in r.fields():
        if fid in (1, 2, 3) and ftype == 5:  # type, uncompressed_page_size, compressed_page_size
            out[("type", "uncompressed", "compressed")[fid - 1]] = r.zigzag()
        elif fid == 5 and ftype == 12:  # data_page_header
            for sfid, stype in r.fields():
                if sfid in (1, 2) and stype == 5:  # num_values, encoding
                    out[("num_values", "encoding")[sfid - 1]] = r.zigzag()
                else:
                    r.skip(stype)
        else:
            r.skip(ftype)
    return out, r.pos


def plain_values_offset(read_at: Any, column: Any, rows: int, nbytes: int) -> int | None:
    """File offset of the ``rows * nbytes`` contiguous values of a column chunk, or None.

    ``read_at(size, offset) -> bytes`` reads the file; ``column`` is pyarrow's
    ``ColumnChunkMetaData``. None unless the chunk is uncompressed, has no dictionary page and is
    exactly one PLAIN data page holding ``rows`` values of ``nbytes`` bytes each.
    """
    try:
        if column.compression != "UNCOMPRESSED" or column.dictionary_page_offset is not None:
            return None
        start = int(column.data_page_offset)
        total = int(column.total_compressed_size)
        values = rows * nbytes
        head = bytes(read_at(min(256, total), start))
        header, length = _page_header(head)
    except (ValueError, OSError, AttributeError):
        return None
    if (header.get("type") != _DATA_PAGE or header.get("encoding") != _PLAIN or header.get("num_values") != rows
            or header.get("compressed") != values or header.get("uncompressed") != values
            or length + values != total):
        return None
    return start + length
