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

from .thrift import Compact

__all__ = ["is_plain_page", "locatable", "page_header", "plain_values_offset"]

_DATA_PAGE = 0
_PLAIN = 0


def locatable(field: Any) -> bool:
    """Whether readers may look for ``field``'s raw values in the files (the one rule every reader
    uses): fixed-shape, non-nullable tensors (a null row has no bytes of its own), not ``bool``
    (stored one byte per element and decoded, never handed out as stored bytes)."""
    return bool(field.is_fixed_tensor and not field.nullable and field.dtype != "bool")



def page_header(data: bytes) -> tuple[dict[str, int], int]:
    """Parse a PageHeader; return its interesting fields and its length in bytes."""
    r = Compact(data)
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


def is_plain_page(header: dict[str, int], values: int) -> bool:
    """Whether a parsed page header (:func:`page_header`) is one uncompressed PLAIN data page of
    ``values`` bytes."""
    return (header.get("type") == _DATA_PAGE and header.get("encoding") == _PLAIN
            and header.get("compressed") == values and header.get("uncompressed") == values)


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
        header, length = page_header(head)
    except (ValueError, OSError, AttributeError):
        return None
    if not is_plain_page(header, values) or header.get("num_values") != rows or length + values != total:
        return None
    return start + length
