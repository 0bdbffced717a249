"""How each field's values sit in Arrow/Parquet columns, both ways.

* scalar numeric/bool fields -> native Arrow columns (statistics kept);
* ``string``/``bytes`` -> Arrow ``string``/``binary``;
* fixed-shape tensors -> ``fixed_size_binary(nbytes)``: the row's C-order little-endian bytes;
* variable-shape tensors -> ``large_binary`` payload plus a ``__shape__<name>`` column
  ``fixed_size_list<int32>[ndim]`` holding each row's shape.

Decoding a fixed-shape column is one ``np.frombuffer`` + reshape over the batch's buffer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from .columns import Column
from .errors import CorruptDatasetError, SchemaError
from .ragged import SHAPE_PREFIX, RaggedRows, check_shapes, padded_shape, shape_fault
from .schema import Field, Schema

__all__ = [
    "SHAPE_PREFIX",
    "shape_column",
    "arrow_schema",
    "storage_columns",
    "stat_columns",
    "encode_batch",
    "decode_column",
    "check_shapes",
    "shape_fault",
    "to_arrow_tensor",
]

_MAX_DIM = 2**31 - 1  # shape columns are int32
SCHEMA_METADATA_KEY = b"tensorstore_fs.schema"

_SCALAR_ARROW = {
    "bool": pa.bool_(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint8": pa.uint8(),
    "uint16": pa.uint16(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
    "float16": pa.float16(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bytes": pa.binary(),
}


def shape_column(name: str) -> str:
    """Name of the per-row shape column of variable-shape field ``name``."""
    return SHAPE_PREFIX + name


def _storage_fields(f: Field) -> list[pa.Field]:
    if f.is_scalar:
        return [pa.field(f.name, _SCALAR_ARROW[f.dtype], nullable=f.nullable)]
    if f.is_fixed_tensor:
        return [pa.field(f.name, pa.binary(f.row_nbytes), nullable=f.nullable)]
    return [
        pa.field(f.name, pa.large_binary(), nullable=f.nullable),
        pa.field(shape_column(f.name), pa.list_(pa.int32(), len(f.shape)), nullable=False),
    ]


def arrow_schema(schema: Schema) -> pa.Schema:
    """The Arrow schema of shard files for ``schema`` (tensor schema JSON in its metadata)."""
    fields = [af for f in schema.fields for af in _storage_fields(f)]
    return pa.schema(fields, metadata={SCHEMA_METADATA_KEY: schema.to_json().encode()})


def storage_columns(schema: Schema, names: list[str] | None = None) -> list[str]:
    """Physical column names holding the given fields (all fields when ``names`` is None)."""
    fields = schema.fields if names is None else [schema.field(n) for n in names]
    out: list[str] = []
    for f in fields:
        out.append(f.name)
        if f.is_variable:
            out.append(shape_column(f.name))
    return out


def stat_columns(schema: Schema) -> list[str]:
    """Columns that get Parquet statistics and manifest min/max: scalar numeric, bool and string
    fields, except float16 (Arrow's compute functions cannot compare half floats)."""
    return [f.name for f in schema.fields if f.is_scalar and f.dtype not in ("bytes", "float16")]


# --------------------------------------------------------------------------------------------
# numpy -> arrow
# --------------------------------------------------------------------------------------------

def _validity_buffer(valid: np.ndarray | None) -> pa.Buffer | None:
    if valid is None:
        return None
    return pa.array(valid, type=pa.bool_()).buffers()[1]


def _encode_fixed(col: Column) -> pa.Array:
    f = col.field
    data = np.ascontiguousarray(col.values)
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    buf = pa.py_buffer(data.reshape(-1).view(np.uint8)) if data.size else pa.py_buffer(b"")
    nulls = 0 if col.valid is None else int((~col.valid).sum())
    return pa.Array.from_buffers(pa.binary(f.row_nbytes), col.length, [_validity_buffer(col.valid), buf], null_count=nulls)


def _encode_variable(col: Column) -> tuple[pa.Array, pa.Array]:
    f = col.field
    ndim = len(f.shape)
    n = col.length
    live = [a for a in col.values if a is not None] if col.valid is not None else col.values  # null rows are None
    if col.shapes is not None:  # checked while normalizing
        shapes = col.shapes
    else:
        shapes = np.zeros((n, ndim), dtype=np.int64)
        dims = np.array([a.shape for a in live], dtype=np.int64).reshape(len(live), ndim)
        if col.valid is None:
            shapes[:] = dims
        else:
            shapes[col.valid] = dims
    if shapes.size and shapes.max() > _MAX_DIM:  # stored as int32 (an empty row may claim any extent)
        i = int(np.argmax((shapes > _MAX_DIM).any(axis=1)))
        raise SchemaError(f"field {f.name!r}: row {i} has shape {tuple(int(d) for d in shapes[i])}; a variable "
                          f"dimension holds at most {_MAX_DIM} values")
    shapes = shapes.astype(np.int32)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.prod(shapes, axis=1, dtype=np.int64) * f.numpy_dtype.itemsize, out=offsets[1:])
    dt = f.numpy_dtype.newbyteorder("<")
    flat = live if ndim == 1 else [a.reshape(-1) for a in live]
    payload = np.concatenate(flat, dtype=dt).view(np.uint8) if live else np.zeros(0, dtype=np.uint8)
    nulls = 0 if col.valid is None else int((~col.valid).sum())
    values = pa.Array.from_buffers(
        pa.large_binary(), n, [_validity_buffer(col.valid), pa.py_buffer(offsets), pa.py_buffer(payload)], null_count=nulls
    )
    shape_arr = pa.FixedSizeListArray.from_arrays(pa.array(shapes.reshape(-1), type=pa.int32()), ndim)
    return values, shape_arr


def _encode_scalar(col: Column) -> pa.Array:
    f = col.field
    typ = _SCALAR_ARROW[f.dtype]
    mask = None if col.valid is None else ~col.valid
    if f.dtype in ("string", "bytes"):
        try:
            return pa.array(col.values, type=typ, mask=mask, from_pandas=False)
        except UnicodeEncodeError:  # found here, not per value while validating: that would cost every batch
            raise _not_utf8(col) from None
    return pa.array(col.values, type=typ, mask=mask)


def _not_utf8(col: Column) -> SchemaError:
    """The error for a string column holding a value UTF-8 cannot encode (a lone surrogate such as
    ``"\\ud800"``, from ``surrogateescape`` decoding or a JSON ``\\ud800`` escape), naming its row."""
    for i, v in enumerate(col.values):
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                return SchemaError(
                    f"field {col.field.name!r}: the string at row {i} cannot be stored as UTF-8: it holds a lone "
                    f"surrogate {v[e.start]!r} at position {e.start} ({v!r:.60})"
                )
    return SchemaError(f"field {col.field.name!r}: a string cannot be stored as UTF-8")


def encode_batch(columns: dict[str, Column], schema: Schema, arrow_sch: pa.Schema) -> pa.RecordBatch:
    """Validated columns -> one Arrow record batch in storage layout."""
    arrays: list[pa.Array] = []
    for f in schema.fields:
        col = columns[f.name]
        if f.is_scalar:
            arrays.append(_encode_scalar(col))
        elif f.is_fixed_tensor:
            arrays.append(_encode_fixed(col))
        else:
            arrays.extend(_encode_variable(col))
    return pa.RecordBatch.from_arrays(arrays, schema=arrow_sch) if arrays else pa.RecordBatch.from_pydict({}, schema=arrow_sch)


def row_nbytes(batch: pa.RecordBatch, schema: Schema) -> np.ndarray:
    """Approximate stored bytes of each row of an encoded batch (for sizing row groups)."""
    n = batch.num_rows
    fixed = 0
    var = np.zeros(n, dtype=np.int64)
    for f in schema.fields:
        if f.is_fixed_tensor:
            fixed += f.row_nbytes
        elif f.is_variable:
            arr = batch.column(f.name)
            offs = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=n + 1, offset=arr.offset * 8)
            var += np.diff(offs) + 4 * len(f.shape)
        elif f.dtype in ("string", "bytes"):
            arr = batch.column(f.name)
            offs = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4)
            var += np.diff(offs) + 4
        else:
            fixed += f.numpy_dtype.itemsize
    return var + fixed


# --------------------------------------------------------------------------------------------
# arrow -> numpy
# --------------------------------------------------------------------------------------------

def _single_chunk(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        if arr.num_chunks == 1:
            return arr.chunk(0)
        if arr.num_chunks == 0:
            return pa.array([], type=arr.type)
        return arr.combine_chunks()
    return arr


def _valid_mask(arr: pa.Array) -> np.ndarray | None:
    if arr.null_count == 0:
        return None
    return np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


def _masked(values: np.ndarray, valid: np.ndarray | None, f: Field) -> np.ndarray:
    if not f.nullable:
        return values
    mask = np.zeros(values.shape, dtype=bool) if valid is None else np.broadcast_to(
        (~valid).reshape((-1,) + (1,) * (values.ndim - 1)), values.shape
    )
    return np.ma.MaskedArray(values, mask=mask)


class _BufferView:
    """Exposes part of an Arrow buffer through ``__array_interface__`` and keeps it alive.

    ``np.frombuffer`` marks views of Arrow buffers read-only, which makes ``torch.from_numpy``
    warn on every batch and stops in-place augmentation. Buffers that Arrow allocated for a
    decoded batch are mutable and private to that batch, so their views are made writable;
    buffers that are not mutable (memory-mapped files) stay read-only.
    """

    def __init__(self, buf: pa.Buffer, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self._buf = buf
        self.__array_interface__ = {
            "data": (buf.address + offset, not buf.is_mutable),
            "shape": shape,
            "typestr": dtype.str,
            "version": 3,
        }


def fixed_values(arr: pa.Array, f: Field) -> np.ndarray:
    """Zero-copy ``(n, *shape)`` view of a ``fixed_size_binary`` column (honours ``arr.offset``)."""
    n = len(arr)
    nbytes = f.row_nbytes
    buf = arr.buffers()[1]
    if n == 0 or buf is None:
        return np.zeros((0, *f.shape), dtype=f.numpy_dtype)
    dtype = f.numpy_dtype.newbyteorder("<")
    if (arr.offset + n) * nbytes > buf.size:
        raise CorruptDatasetError(f"field {f.name!r}: buffer holds {buf.size} bytes, {n} rows need {(arr.offset + n) * nbytes}")
    return np.asarray(_BufferView(buf, arr.offset * nbytes, (n, *f.shape), dtype))


class _VariableParts:
    """A decoded variable-shape column, checked: its typed payload, row extents and shapes.

    ``starts``/``stops`` are element (not byte) positions in ``typed`` when ``typed`` is not
    None (offsets aligned to the itemsize); otherwise rows are viewed from the byte ``payload``.
    """

    __slots__ = ("payload", "typed", "offs", "shp", "valid", "dtype")

    def __init__(self, payload: np.ndarray, typed: np.ndarray | None, offs: np.ndarray, shp: np.ndarray,
                 valid: np.ndarray | None, dtype: np.dtype) -> None:
        self.payload = payload
        self.typed = typed
        self.offs = offs
        self.shp = shp
        self.valid = valid
        self.dtype = dtype


def _corrupt_row(message: str, row: int) -> CorruptDatasetError:
    """A decode error about row ``row`` of a batch; ``.row`` tells callers that know where the
    batch's rows come from (a file, a row group) which one it is."""
    err = CorruptDatasetError(message)
    err.row = row  # type: ignore[attr-defined]
    return err


def _variable_parts(arr: pa.Array, shapes: pa.Array, f: Field) -> _VariableParts:
    """Read a variable-shape column's buffers and check every row's shape (:func:`shape_fault`)
    and every valid row's size, vectorised."""
    n = len(arr)
    ndim = len(f.shape)
    dt = f.numpy_dtype.newbyteorder("<")
    offs = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=n + 1, offset=arr.offset * 8)
    data = arr.buffers()[2]
    payload = np.frombuffer(data, dtype=np.uint8) if data is not None and data.size else np.zeros(0, np.uint8)
    shp = shapes.flatten().to_numpy(zero_copy_only=False)
    if len(shapes) != n or shp.size != n * ndim:
        raise CorruptDatasetError(f"field {f.name!r}: the shape column holds {shp.size} values for {len(shapes)} "
                                  f"rows; {n} rows of {ndim} dimensions need {n * ndim}")
    shp = shp.reshape(n, ndim)
    valid = _valid_mask(arr)
    itemsize = dt.itemsize
    fault = shape_fault(shp, f.shape, itemsize, valid)
    if fault is not None:
        raise _corrupt_row(f"field {f.name!r}: row {fault[0]} {fault[1]}", fault[0])
    # values per row, exact (every row is under 2**60 bytes): column by column, 5x faster than
    # np.prod(axis=1) on an (n, 3) array
    expected = shp[:, 0].astype(np.int64)
    for k in range(1, ndim):
        expected *= shp[:, k]
    # bytes each row's slice of the payload really holds (slices past the end are cut short)
    lo = np.clip(offs[:-1], 0, payload.size)
    hi = np.clip(offs[1:], 0, payload.size)
    held = np.maximum(hi - lo, 0)
    bad = (held != expected * itemsize) | (offs[1:] < offs[:-1])
    if valid is not None:
        bad &= valid
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        shape = tuple(int(x) for x in shp[i])
        raise _corrupt_row(
            f"field {f.name!r}: row {i} payload holds {int(held[i])} bytes ({int(held[i]) / itemsize:g} values) "
            f"but its shape {shape} needs {int(expected[i])}", i)
    typed = None
    if not (offs % itemsize).any():
        typed = payload[: payload.size - payload.size % itemsize].view(dt)
    return _VariableParts(payload, typed, offs, shp, valid, dt)


def variable_values(arr: pa.Array, shapes: pa.Array, f: Field) -> list[np.ndarray | None]:
    """Per-row zero-copy views of a variable-shape column.

    Parameters
    ----------
    arr : pyarrow.Array
        The ``large_binary`` payload column.
    shapes : pyarrow.Array
        The matching ``fixed_size_list<int32>[ndim]`` shape column.
    f : Field
        The field's schema.

    Returns
    -------
    list of numpy.ndarray or None
        One read-only view per row, shaped by its stored shape; ``None`` for null rows.

    Raises
    ------
    CorruptDatasetError
        A valid row's payload does not hold the values its shape needs (the first such row is named).
    """
    n = len(arr)
    if n == 0:
        return []
    parts = _variable_parts(arr, shapes, f)
    return _rows(parts, len(f.shape))


def _rows(parts: _VariableParts, ndim: int) -> list[np.ndarray | None]:
    """One view per row (None for null rows) with one slice (and reshape) per row."""
    shapes = parts.shp.tolist()
    if parts.typed is not None:
        src, dt = parts.typed, None
        bounds = (parts.offs // parts.dtype.itemsize).tolist()
    else:
        src, dt = parts.payload, parts.dtype
        bounds = parts.offs.tolist()
    lo, hi = bounds[:-1], bounds[1:]
    if dt is None and parts.valid is None:
        if ndim == 1:
            return [src[a:b] for a, b in zip(lo, hi)]
        return [src[a:b].reshape(s) for a, b, s in zip(lo, hi, shapes)]
    if dt is None:
        return [src[a:b].reshape(s) if v else None for a, b, s, v in zip(lo, hi, shapes, parts.valid.tolist())]
    valid = parts.valid.tolist() if parts.valid is not None else [True] * len(shapes)
    return [src[a:b].view(dt).reshape(s) if v else None for a, b, s, v in zip(lo, hi, shapes, valid)]


def pad_variable(rows: list[np.ndarray | None], f: Field, max_padded_bytes: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Pad variable-shape rows with zeros to their largest extent per dimension.

    Parameters
    ----------
    rows : list of numpy.ndarray or None
        Rows as returned by :func:`variable_values`.
    f : Field
        The field's schema.
    max_padded_bytes : int, optional
        Cap on the padded array's bytes (:func:`~tensorstore_fs.ragged.padded_shape`; None: the
        larger of 1 GiB and 16 times the rows' own bytes).

    Returns
    -------
    padded : numpy.ndarray
        ``(n, *max_shape)`` of ``f``'s dtype, zeros past each row's extent.
    shapes : numpy.ndarray
        ``(n, ndim)`` int64 row shapes; null rows have shape zeros.

    Raises
    ------
    InvalidArgumentError
        The padded array would pass the cap (nothing is allocated).
    """
    ndim = len(f.shape)
    shapes = np.array([r.shape if r is not None else (0,) * ndim for r in rows], dtype=np.int64).reshape(len(rows), ndim)
    values = sum(r.size for r in rows if r is not None)
    out = np.zeros(padded_shape(f.name, shapes, f.numpy_dtype, values, max_padded_bytes), dtype=f.numpy_dtype)
    for i, r in enumerate(rows):
        if r is not None and r.size:
            out[(i, *[slice(0, s) for s in r.shape])] = r
    return out, shapes


LONG_ROW_VALUES = 64  # mean values a row from which padding copies row by row (measured here: rows of
# 1-8 values pad faster through the mask, rows of 16-512 row by row)


def _pad_parts(parts: _VariableParts, f: Field, max_padded_bytes: int | None = None
               ) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`pad_variable` in a few numpy calls, for fields whose only variable dimension is the
    first and whose valid rows sit back to back in an aligned payload; None where that does not hold."""
    if parts.typed is None or f.shape[0] is not None or any(d is None for d in f.shape[1:]):
        return None
    n = len(parts.shp)
    shapes = parts.shp.astype(np.int64)
    if parts.valid is not None:
        shapes[~parts.valid] = 0
    live = shapes[:, 0] > 0 if parts.valid is None else (shapes[:, 0] > 0) & parts.valid
    rest = shapes[live, 1:]
    if len(rest) and ((rest != rest[0]).any() or (shapes[:, 1:] > rest[0]).any()):
        return None
    bounds = parts.offs // parts.dtype.itemsize
    starts, stops = bounds[:-1][live], bounds[1:][live]
    if len(starts) > 1 and (starts[1:] != stops[:-1]).any():
        return None
    values = int(stops[-1] - starts[0]) if len(starts) else 0
    max_shape = padded_shape(f.name, shapes, f.numpy_dtype, values, max_padded_bytes)[1:]
    out = np.zeros((n, *max_shape), dtype=f.numpy_dtype)
    if len(starts) and out.size:
        inner = int(np.prod(max_shape[1:], dtype=np.int64))
        src = parts.typed[int(starts[0]):int(stops[-1])]
        if len(src) >= LONG_ROW_VALUES * n:
            # long rows (token sequences): one slice assignment a row beats a (rows, max length)
            # mask, whose cost grows with the padding
            src = src.reshape(-1, *max_shape[1:])
            at = 0
            for i, length in enumerate(shapes[:, 0].tolist()):
                if length:
                    out[i, :length] = src[at:at + length]
                    at += length
            return out, shapes
        mask = np.arange(max_shape[0]) < shapes[:, :1]
        if inner == 1:
            out.reshape(n, max_shape[0])[mask] = src
        elif src.dtype == out.dtype:  # move each row's (inner,) block as one opaque item
            cell = np.dtype((np.void, inner * out.dtype.itemsize))
            out.reshape(n, max_shape[0], inner).view(cell)[..., 0][mask] = src.reshape(-1, inner).view(cell)[:, 0]
        else:
            out.reshape(n, max_shape[0], inner)[mask] = src.reshape(-1, inner)
    return out, shapes


def decode_column(table: pa.Table | pa.RecordBatch, f: Field, *, pad: bool = False,
                  flat: bool = False, max_padded_bytes: int | None = None) -> dict[str, Any]:
    """Decode field ``f`` from a storage-layout batch into numpy.

    Returns a dict with ``{f.name: values}``, plus ``{f.name + "__shape": shapes}`` for padded
    variable-shape fields. Variable-shape fields are a list of per-row arrays, or with ``pad``
    zero-padded to the batch's own widest extents (at most ``max_padded_bytes``, see
    :func:`~tensorstore_fs.ragged.padded_shape`), or with ``flat`` one
    :class:`~tensorstore_fs.ragged.RaggedRows`. Every row's stored shape is checked
    (:func:`shape_fault`): a bad one is a :class:`~tensorstore_fs.CorruptDatasetError` naming the
    field and the row.
    """
    arr = _single_chunk(table.column(f.name))
    if f.is_fixed_tensor:
        return {f.name: _masked(fixed_values(arr, f), _valid_mask(arr), f)}
    if f.is_variable and flat:
        return {f.name: _flat_rows(arr, _single_chunk(table.column(shape_column(f.name))), f)}
    if f.is_variable:
        shape_arr = _single_chunk(table.column(shape_column(f.name)))
        if len(arr) == 0:
            rows: list[np.ndarray | None] = []
        else:
            parts = _variable_parts(arr, shape_arr, f)
            if pad:
                fast = _pad_parts(parts, f, max_padded_bytes)
                if fast is not None:
                    return {f.name: fast[0], f.name + "__shape": fast[1]}
            rows = _rows(parts, len(f.shape))
        if pad:
            padded, shapes = pad_variable(rows, f, max_padded_bytes)
            return {f.name: padded, f.name + "__shape": shapes}
        return {f.name: rows}
    if f.dtype in ("string", "bytes"):
        return {f.name: arr.to_numpy(zero_copy_only=False)}
    valid = _valid_mask(arr)
    if valid is not None:
        arr = arr.fill_null(False if f.dtype == "bool" else 0)
    values = arr.to_numpy(zero_copy_only=False)
    return {f.name: _masked(values, valid, f)}


def pad_rows(rows: RaggedRows, f: Field, max_padded_bytes: int | None = None) -> dict[str, np.ndarray]:
    """``decode_column(..., pad=True)`` of rows already decoded flat: ``{name: zero-padded
    values, name + "__shape": shapes}`` (a batch sliced from one flat decode of a longer read),
    padded to the batch's own widest extents, at most ``max_padded_bytes``."""
    parts = _VariableParts(rows.values, rows.values, rows.offsets * rows.values.itemsize, rows.shapes, rows.valid,
                           rows.values.dtype)
    fast = _pad_parts(parts, f, max_padded_bytes) if len(rows) else None
    padded, shapes = fast if fast is not None else pad_variable(rows.to_list(), f, max_padded_bytes)
    return {f.name: padded, f.name + "__shape": shapes}


def _flat_rows(arr: pa.Array, shapes: pa.Array, f: Field) -> RaggedRows:
    """A variable-shape column as flat values plus offsets: a view of the payload where its rows
    are element-aligned (always, for files tsfs writes), else one copy of the rows."""
    ndim = len(f.shape)
    if len(arr) == 0:
        return RaggedRows(np.zeros(0, f.numpy_dtype), np.zeros(1, np.int64), np.zeros((0, ndim), np.int64))
    parts = _variable_parts(arr, shapes, f)
    dims = parts.shp.astype(np.int64)
    if parts.valid is not None:
        dims[~parts.valid] = 0
    if parts.typed is not None:
        return RaggedRows(parts.typed, parts.offs // parts.dtype.itemsize, dims, parts.valid)
    rows = _rows(parts, ndim)
    live = [r.reshape(-1) for r in rows if r is not None]
    lengths = np.array([0 if r is None else r.size for r in rows], dtype=np.int64)
    offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths)])
    values = np.concatenate(live).astype(f.numpy_dtype, copy=False) if live else np.zeros(0, f.numpy_dtype)
    return RaggedRows(values, offsets, dims, parts.valid)


def to_arrow_tensor(arr: pa.Array | pa.ChunkedArray, f: Field) -> pa.Array:
    """Reinterpret a ``fixed_size_binary`` column as ``arrow.fixed_shape_tensor`` without copying."""
    arr = _single_chunk(arr)
    value_type = _SCALAR_ARROW[f.dtype]
    n = len(arr)
    if f.dtype == "bool":  # Arrow booleans are bit-packed: this one needs a copy
        values = pa.array(fixed_values(arr, f).reshape(-1), type=pa.bool_())
    else:
        buf = arr.buffers()[1]
        if buf is None:
            buf = pa.py_buffer(b"")
        sliced = buf.slice(arr.offset * f.row_nbytes, n * f.row_nbytes)
        values = pa.Array.from_buffers(value_type, n * f.numel, [None, sliced])
    storage = pa.FixedSizeListArray.from_arrays(values, f.numel, mask=None if arr.null_count == 0 else arr.is_null())
    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(value_type, f.shape), storage)
