"""Thrift's compact protocol, as far as Parquet's page headers and footers need it.

Parquet describes pages and files with Thrift structs in the compact protocol. pyarrow writes and
reads them, but exposes neither a page header nor a writable footer, and two things here need them:
locating a column chunk's raw values (:mod:`tensorstore_fs.parquet.pages`) and moving column chunks to
aligned offsets after pyarrow wrote them (:mod:`tensorstore_fs.parquet.align`).

:func:`decode_struct` reads a struct into a generic tree that keeps every field, known or not, in
its order; :func:`encode_struct` writes such a tree back byte for byte (tested on pyarrow's own
footers), so a caller changes the few fields it knows and nothing else.

Tree values: a struct is a list of ``[field id, type, value]``; a list or set is
``(element type, [values])``; a map ``(key type, value type, [(key, value)])``; integers are
ints, a double its 8 raw bytes, a binary ``bytes``; a boolean field carries its value in its type
(``TRUE``/``FALSE``) and ``None``.
"""

from __future__ import annotations

from typing import Any, Iterator

__all__ = ["Compact", "decode_struct", "encode_struct", "TRUE", "FALSE", "I16", "I32", "I64", "BINARY", "LIST",
           "STRUCT"]

TRUE, FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(1, 13)


class Compact:
    """A reader of the compact protocol over ``data``, from byte ``pos`` on."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise ValueError("truncated thrift data")
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

    def raw(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise ValueError("truncated thrift data")
        out = bytes(self.data[self.pos:self.pos + size])
        self.pos += size
        return out

    def fields(self) -> Iterator[tuple[int, int]]:
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

    def _collection_head(self) -> tuple[int, int]:
        head = self.byte()
        size = head >> 4 if head >> 4 != 15 else self.varint()
        return head & 0x0F, size

    def value(self, ftype: int, in_collection: bool = False) -> Any:
        """Read one value of ``ftype`` (see the module docstring for its form)."""
        if ftype in (TRUE, FALSE):
            # a struct field holds its boolean in its type; a collection element is one byte
            return self.byte() == TRUE if in_collection else None
        if ftype == BYTE:
            return self.byte()
        if ftype in (I16, I32, I64):
            return self.zigzag()
        if ftype == DOUBLE:
            return self.raw(8)
        if ftype == BINARY:
            return self.raw(self.varint())
        if ftype in (LIST, SET):
            etype, size = self._collection_head()
            return (etype, [self.value(etype, True) for _ in range(size)])
        if ftype == MAP:
            size = self.varint()
            if not size:
                return (0, 0, [])
            kv = self.byte()
            ktype, vtype = kv >> 4, kv & 0x0F
            return (ktype, vtype, [(self.value(ktype, True), self.value(vtype, True)) for _ in range(size)])
        if ftype == STRUCT:
            return [[fid, t, self.value(t)] for fid, t in self.fields()]
        raise ValueError(f"unknown thrift type {ftype}")

    def skip(self, ftype: int) -> None:
        self.value(ftype)


def decode_struct(data: bytes, pos: int = 0) -> tuple[list[list[Any]], int]:
    """Decode the struct at ``data[pos:]``; return it and the position after it."""
    r = Compact(data, pos)
    return r.value(STRUCT), r.pos


def _varint(out: bytearray, n: int) -> None:
    if n < 0:
        raise ValueError("negative varint")
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def _zigzag(out: bytearray, n: int) -> None:
    _varint(out, ((n << 1) ^ (n >> 63)) & 0xFFFFFFFFFFFFFFFF)


def _encode_value(out: bytearray, ftype: int, value: Any, in_collection: bool = False) -> None:
    if ftype in (TRUE, FALSE):
        if in_collection:
            out.append(TRUE if value else FALSE)
    elif ftype == BYTE:
        out.append(value & 0xFF)
    elif ftype in (I16, I32, I64):
        _zigzag(out, value)
    elif ftype == DOUBLE:
        out += value
    elif ftype == BINARY:
        _varint(out, len(value))
        out += value
    elif ftype in (LIST, SET):
        etype, items = value
        if len(items) < 15:
            out.append((len(items) << 4) | etype)
        else:
            out.append(0xF0 | etype)
            _varint(out, len(items))
        for item in items:
            _encode_value(out, etype, item, True)
    elif ftype == MAP:
        ktype, vtype, pairs = value
        _varint(out, len(pairs))
        if pairs:
            out.append((ktype << 4) | vtype)
            for k, v in pairs:
                _encode_value(out, ktype, k, True)
                _encode_value(out, vtype, v, True)
    elif ftype == STRUCT:
        _encode_fields(out, value)
    else:
        raise ValueError(f"unknown thrift type {ftype}")


def _encode_fields(out: bytearray, fields: list[list[Any]]) -> None:
    last = 0
    for fid, ftype, value in fields:
        delta = fid - last
        if 0 < delta <= 15:
            out.append((delta << 4) | ftype)
        else:
            out.append(ftype)
            _zigzag(out, fid)
        last = fid
        _encode_value(out, ftype, value)
    out.append(0)


def encode_struct(fields: list[list[Any]]) -> bytes:
    """Encode a struct tree (as :func:`decode_struct` returns it)."""
    out = bytearray()
    _encode_fields(out, fields)
    return bytes(out)
