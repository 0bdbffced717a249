"""Turn what users hand to the writer into validated, schema-typed numpy columns.

Accepted inputs: a dict of columns (numpy arrays, torch/tf tensors, lists, pandas Series, pyarrow
arrays), a list of row dicts, a pandas DataFrame, a pyarrow Table or RecordBatch. Every check names
the field, the row and what was expected; nothing is written until a whole batch has passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import InvalidArgumentError, SchemaError
from .schema import Field, Schema

__all__ = ["Column", "normalize_batch", "infer_schema"]


@dataclass(frozen=True)
class Column:
    """One field's values for a batch, already cast to the field's dtype.

    ``values`` is an ``(n, *shape)`` array for scalar and fixed-shape fields, an object array of
    ``str``/``bytes`` for string fields, and a list of arrays (``None`` for null) for variable
    shapes. ``valid`` is a boolean mask, or ``None`` when every row holds a value.
    """

    field: Field
    values: Any
    valid: np.ndarray | None
    length: int
    shapes: np.ndarray | None = None  # variable shapes: (n, ndim) row shapes, when already known


# --------------------------------------------------------------------------------------------
# Converting foreign containers to numpy / python
# --------------------------------------------------------------------------------------------

def _from_framework_tensor(value: Any) -> Any:
    """torch / tensorflow / jax tensors -> numpy, without importing those frameworks."""
    mod = type(value).__module__
    if mod.startswith("torch"):
        return value.detach().cpu().numpy()
    if mod.startswith("tensorflow") or mod.startswith("jax"):
        return np.asarray(value)
    return value


def _arrow_to_python_column(arr: Any) -> tuple[Any, np.ndarray | None]:
    """A pyarrow Array/ChunkedArray -> (numpy array or list, validity mask or None)."""
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    valid = None
    if arr.null_count:
        valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    t = arr.type
    if isinstance(t, pa.FixedShapeTensorType):
        # to_numpy_ndarray() ignores the storage offset in some pyarrow versions: slice it ourselves.
        storage = arr.storage
        values = storage.values.slice(storage.offset * t.storage_type.list_size, len(arr) * t.storage_type.list_size)
        flat = values.to_numpy(zero_copy_only=False)
        return flat.reshape((len(arr), *t.shape)), valid
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _arrow_list_rows(arr, valid), valid
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return arr.to_numpy(zero_copy_only=False), valid
    if pa.types.is_fixed_size_binary(t):
        return np.array(arr.to_pylist(), dtype=object), valid
    if valid is not None:
        arr = arr.fill_null(False if pa.types.is_boolean(t) else 0)
    return arr.to_numpy(zero_copy_only=False), valid


def _arrow_list_rows(arr: Any, valid: np.ndarray | None) -> list[np.ndarray | None]:
    """Rows of a (large/fixed-size) list array as numpy arrays of the list's value dtype."""
    import pyarrow as pa

    inner = arr.type.value_type
    if pa.types.is_list(inner) or pa.types.is_large_list(inner) or pa.types.is_fixed_size_list(inner):
        while pa.types.is_list(inner) or pa.types.is_large_list(inner) or pa.types.is_fixed_size_list(inner):
            inner = inner.value_type
        dtype = inner.to_pandas_dtype()
        rows: list[np.ndarray | None] = []
        for i, r in enumerate(arr.to_pylist()):
            try:
                rows.append(None if r is None else np.asarray(r, dtype=dtype))
            except (ValueError, TypeError):
                raise SchemaError(f"nested list column is ragged or holds nulls at row {i}") from None
        return rows
    if pa.types.is_fixed_size_list(arr.type):
        size = arr.type.list_size
        offsets = (np.arange(len(arr) + 1, dtype=np.int64) + arr.offset) * size
        values = arr.values
    else:
        offsets = np.asarray(arr.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
        values = arr.values
    if values.null_count:  # allowed only under null rows (fixed-size lists keep placeholders there)
        elem_ok = np.asarray(values.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        for i in range(len(arr)):
            if (valid is None or valid[i]) and not elem_ok[offsets[i]:offsets[i + 1]].all():
                raise SchemaError(f"list column holds a null element inside row {i}; only whole rows may be null")
        values = values.fill_null(False if pa.types.is_boolean(values.type) else 0)
    flat = values.to_numpy(zero_copy_only=False)
    return [None if (valid is not None and not valid[i]) else flat[offsets[i]:offsets[i + 1]]
            for i in range(len(arr))]


def _masked_column(value: np.ma.MaskedArray) -> tuple[np.ndarray, np.ndarray | None]:
    """A numpy masked array -> (data, row validity). A row is null when all its elements are masked."""
    mask = np.ma.getmaskarray(value)
    if not mask.any():
        return np.asarray(value.data), None
    n = mask.shape[0]
    flat = mask.reshape(n, -1)
    row_null = flat.all(axis=1)
    partial = flat.any(axis=1) & ~row_null
    if partial.any():
        raise SchemaError(
            f"masked array masks only part of row {int(np.flatnonzero(partial)[0])}: a row is null as a "
            "whole or not at all"
        )
    return np.asarray(value.data), ~row_null


def _pandas_column(series: Any) -> tuple[Any, np.ndarray | None]:
    """A pandas Series -> numpy (object arrays with None for missing strings/objects; nullable
    extension dtypes such as Int64 or boolean -> object arrays with None for NA)."""
    import pandas as pd

    dtype = series.dtype
    if dtype == object or str(dtype).startswith("str"):
        values = series.to_numpy(dtype=object)
        values = np.array([None if (isinstance(v, float) and v != v) or v is pd.NA else v for v in values], dtype=object)
        return values, None
    if pd.api.types.is_extension_array_dtype(dtype) and bool(np.asarray(pd.isna(series)).any()):
        return series.to_numpy(dtype=object, na_value=None), None
    return series.to_numpy(), None


def _as_columns(data: Any) -> tuple[dict[str, Any], dict[str, np.ndarray | None]]:
    """Any accepted batch -> ({name: raw column}, {name: validity or None})."""
    valid: dict[str, np.ndarray | None] = {}
    mod = type(data).__module__
    if mod.startswith("pyarrow"):
        import pyarrow as pa

        if isinstance(data, (pa.Table, pa.RecordBatch)):
            cols: dict[str, Any] = {}
            for name, arr in zip(data.column_names, data.columns):
                cols[name], valid[name] = _arrow_to_python_column(arr)
            return cols, valid
    if mod.startswith("pandas") and hasattr(data, "columns") and hasattr(data, "iloc"):
        cols = {}
        for name in data.columns:
            cols[str(name)], valid[str(name)] = _pandas_column(data[name])
        return cols, valid
    if isinstance(data, Mapping):
        cols = {}
        for name, value in data.items():
            if not isinstance(name, str):
                raise InvalidArgumentError(f"column names must be str, got {name!r}")
            value = _from_framework_tensor(value)
            vmod = type(value).__module__
            if isinstance(value, np.ma.MaskedArray):
                value, valid[name] = _masked_column(value)
            elif vmod.startswith("pyarrow"):
                value, valid[name] = _arrow_to_python_column(value)
            elif vmod.startswith("pandas"):
                value, valid[name] = _pandas_column(value)
            else:
                valid[name] = None
            cols[name] = value
        return cols, valid
    if isinstance(data, (list, tuple)):
        if not data:
            return {}, {}
        if not all(isinstance(r, Mapping) for r in data):
            bad = next(i for i, r in enumerate(data) if not isinstance(r, Mapping))
            raise InvalidArgumentError(
                f"a list batch must hold row dicts; row {bad} is {type(data[bad]).__name__}"
            )
        names: list[str] = []
        seen: set[str] = set()
        for r in data:
            for k in r:
                if k not in seen:
                    seen.add(k)
                    names.append(k)
        cols = {}
        for name in names:
            cols[name] = [_from_framework_tensor(r.get(name)) for r in data]
            valid[name] = None
        return cols, valid
    raise InvalidArgumentError(
        "unsupported batch type "
        f"{type(data).__module__}.{type(data).__name__}: expected a dict of columns, a list of row "
        "dicts, a pandas DataFrame or a pyarrow Table/RecordBatch"
    )


def _row_array(value: Any, name: str, row: int) -> np.ndarray:
    """One row's value as an array; ragged nested lists become a SchemaError naming the row."""
    try:
        a = np.asarray(_from_framework_tensor(value))
    except (ValueError, TypeError):
        a = None
    if a is None or a.dtype == object:
        raise SchemaError(f"field {name!r}: values are ragged or non-numeric at row {row}")
    return a


def _length(value: Any) -> int:
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            raise SchemaError("a column must be an array with one entry per row, got a 0-d array")
        return int(value.shape[0])
    return len(value)


# --------------------------------------------------------------------------------------------
# Casting
# --------------------------------------------------------------------------------------------

def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0])


def _cast_numeric(arr: np.ndarray, f: Field, row0: int = 0, *, single_row: bool = False) -> np.ndarray:
    """Cast ``arr`` to ``f``'s dtype when that loses no information (floats may lose precision)."""
    target = f.numpy_dtype
    src = arr.dtype
    if src == target:
        return arr
    where = (lambda m: f"row {row0}") if single_row else (lambda m: f"row {row0 + _first(m)}")
    if src.kind not in "biuf":
        raise SchemaError(f"field {f.name!r}: expected {f.dtype} values, got {src} at row {row0}")
    if target.kind == "b":
        if src.kind != "b":
            raise SchemaError(f"field {f.name!r}: expected bool values, got {src} (cast to bool is not safe) at row {row0}")
        return arr.astype(target)
    if target.kind in "iu":
        if src.kind == "f":
            frac = arr != np.floor(arr)
            at = where(frac) if frac.any() else f"row {row0}"
            raise SchemaError(
                f"field {f.name!r}: expected {f.dtype} values, got {src}; floats are not cast to integers "
                f"(at {at})"
            )
        if np.can_cast(src, target, casting="safe"):
            return arr.astype(target)
        info = np.iinfo(target)
        if arr.size:
            bad = (arr < info.min) | (arr > info.max)
            if bad.any():
                bad_val = arr.reshape(-1)[int(np.flatnonzero(bad.reshape(-1))[0])]
                raise SchemaError(
                    f"field {f.name!r}: value {bad_val} does not fit {f.dtype} "
                    f"[{info.min}, {info.max}] at {where(bad)}"
                )
        return arr.astype(target)
    # float target: any int/float source is accepted (precision may be lost, like torch/numpy).
    if src.kind == "b":
        raise SchemaError(f"field {f.name!r}: expected {f.dtype} values, got bool at row {row0}")
    return arr.astype(target)


def _check_fixed_dims(shape: tuple, f: Field, row: int) -> None:
    if len(shape) != len(f.shape) or any(d is not None and d != s for d, s in zip(f.shape, shape)):
        raise SchemaError(f"field {f.name!r}: expected shape {_fmt_shape(f.shape)}, got {tuple(shape)} at row {row}")


def _fmt_shape(shape: tuple) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _null_row(f: Field, row: int) -> SchemaError:
    return SchemaError(f"field {f.name!r}: null value at row {row} but the field is not nullable")


# --------------------------------------------------------------------------------------------
# Per-kind normalisation
# --------------------------------------------------------------------------------------------

def _normalize_text(f: Field, raw: Any, valid: np.ndarray | None, n: int) -> Column:
    want = str if f.dtype == "string" else (bytes, bytearray, memoryview)
    if isinstance(raw, np.ndarray) and raw.dtype.kind in ("U", "S"):
        if (raw.dtype.kind == "U") != (f.dtype == "string"):
            raise SchemaError(f"field {f.name!r}: expected {f.dtype} values, got numpy {raw.dtype} at row 0")
        if raw.ndim != 1:
            raise SchemaError(f"field {f.name!r}: expected shape (), got {raw.shape[1:]} at row 0")
        return Column(f, raw.astype(object), valid, n)
    out = np.empty(n, dtype=object)
    mask = np.ones(n, dtype=bool) if valid is None else valid.copy()
    for i, v in enumerate(raw):
        if v is None or (valid is not None and not valid[i]):
            if not f.nullable:
                raise _null_row(f, i)
            mask[i] = False
            continue
        if isinstance(v, np.generic):
            v = v.item()
        if not isinstance(v, want):
            raise SchemaError(f"field {f.name!r}: expected {f.dtype}, got {type(v).__name__} {v!r:.40} at row {i}")
        out[i] = bytes(v) if f.dtype == "bytes" else v
    return Column(f, out, None if mask.all() else mask, n)


def _normalize_dense(f: Field, raw: Any, valid: np.ndarray | None, n: int) -> Column:
    """Scalars and fixed-shape tensors: one ``(n, *shape)`` array."""
    if isinstance(raw, np.ndarray) and raw.dtype != object:
        arr = raw
        if arr.shape[1:] != f.shape:
            if arr.ndim - 1 != len(f.shape):
                raise SchemaError(
                    f"field {f.name!r}: expected shape {_fmt_shape(f.shape)} (rank {len(f.shape)}), "
                    f"got {arr.shape[1:]} (rank {arr.ndim - 1}) at row 0"
                )
            raise SchemaError(f"field {f.name!r}: expected shape {_fmt_shape(f.shape)}, got {arr.shape[1:]} at row 0")
        arr = _cast_numeric(arr, f)
        if valid is not None and not f.nullable and not valid.all():
            raise _null_row(f, int(np.flatnonzero(~valid)[0]))
        return Column(f, np.ascontiguousarray(arr), valid, n)
    # a list (or object array) of per-row values
    out = np.zeros((n, *f.shape), dtype=f.numpy_dtype)
    mask = np.ones(n, dtype=bool) if valid is None else valid.copy()
    rows = list(raw)
    for i, v in enumerate(rows):
        if v is None or (valid is not None and not valid[i]):
            if not f.nullable:
                raise _null_row(f, i)
            mask[i] = False
            continue
        a = _row_array(v, f.name, i)
        _check_fixed_dims(a.shape, f, i)
        out[i] = _cast_numeric(a, f, i, single_row=True)
    return Column(f, out, None if mask.all() else mask, n)


def _normalize_variable(f: Field, raw: Any, valid: np.ndarray | None, n: int) -> Column:
    out: list[np.ndarray | None] = []
    mask = np.ones(n, dtype=bool) if valid is None else valid.copy()
    if isinstance(raw, np.ndarray) and raw.dtype != object:
        # a dense array is a batch of equal-shaped rows
        arr = raw
        if arr.ndim - 1 != len(f.shape):
            raise SchemaError(
                f"field {f.name!r}: expected rank {len(f.shape)} {_fmt_shape(f.shape)}, "
                f"got shape {arr.shape[1:]} at row 0"
            )
        _check_fixed_dims(arr.shape[1:], f, 0)
        arr = _cast_numeric(arr, f)
        out = [arr[i] for i in range(n)]
    elif (fast := _same_dtype_rows(f, raw, valid)) is not None:
        out, dims = fast
        return Column(f, out, None, n, dims)
    else:
        for i, v in enumerate(raw):
            if v is None or (valid is not None and not valid[i]):
                if not f.nullable:
                    raise _null_row(f, i)
                mask[i] = False
                out.append(None)
                continue
            a = _row_array(v, f.name, i)
            _check_fixed_dims(a.shape, f, i)
            out.append(_cast_numeric(a, f, i, single_row=True))
    if valid is not None and not f.nullable and not mask.all():
        raise _null_row(f, int(np.flatnonzero(~mask)[0]))
    return Column(f, out, None if mask.all() else mask, n)


def _same_dtype_rows(f: Field, raw: Any, valid: np.ndarray | None) -> tuple[list[np.ndarray], np.ndarray] | None:
    """The rows as they are, and their ``(n, ndim)`` shapes, when every one is a numpy array of
    the field's dtype and rank (the usual batch of token sequences): the shapes are checked in one
    numpy pass instead of row by row. None where that does not hold (the row-by-row path then
    converts, casts or names the bad row)."""
    if valid is not None or not isinstance(raw, (list, tuple, np.ndarray)) or not len(raw):
        return None
    rows = list(raw)
    ndim = len(f.shape)
    kinds = {(v.dtype, v.ndim) if type(v) is np.ndarray else None for v in rows}  # one pass
    if kinds != {(f.numpy_dtype, ndim)}:
        return None
    shapes = [v.shape for v in rows]
    dims = np.array(shapes, dtype=np.int64).reshape(len(rows), ndim)
    for k, d in enumerate(f.shape):
        if d is not None and (dims[:, k] != d).any():
            i = int(np.flatnonzero(dims[:, k] != d)[0])
            _check_fixed_dims(shapes[i], f, i)
    return rows, dims


def _python_scalars(raw: Sequence[Any], f: Field) -> np.ndarray:
    """A list of Python scalars -> array. Integer fields keep exact Python ints (beyond int64 too)."""
    if not raw:
        return np.zeros((0,), dtype=f.numpy_dtype)
    if f.numpy_dtype.kind in "iu" and all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in raw):
        info = np.iinfo(f.numpy_dtype)
        for i, v in enumerate(raw):
            if not info.min <= int(v) <= info.max:
                raise SchemaError(f"field {f.name!r}: value {int(v)} does not fit {f.dtype} [{info.min}, {info.max}] at row {i}")
        return np.array([int(v) for v in raw], dtype=f.numpy_dtype)
    if f.numpy_dtype.kind == "f":
        # numpy warns "invalid value encountered in cast" for NaN numpy-float scalars inside a list
        # (mixed with Python floats); NaN is a legitimate value here
        with np.errstate(invalid="ignore"):
            return np.asarray(raw)
    return np.asarray(raw)


def normalize_batch(data: Any, schema: Schema) -> tuple[dict[str, Column], int]:
    """Validate ``data`` against ``schema``; return ``({name: Column}, rows)``.

    Raises
    ------
    SchemaError
        Naming the field, the row and what was expected, for unknown or missing fields, wrong
        dtypes, shapes or ranks, ragged data for a fixed shape and nulls in non-nullable fields.
    """
    raw_cols, raw_valid = _as_columns(data)
    unknown = [k for k in raw_cols if k not in schema]
    if unknown:
        raise SchemaError(f"unknown field {unknown[0]!r} in batch; schema fields are {schema.names}")
    lengths = {k: _length(v) for k, v in raw_cols.items()}
    if len(set(lengths.values())) > 1:
        raise SchemaError(f"columns have different lengths: {lengths}")
    n = next(iter(lengths.values()), 0)
    if isinstance(data, (list, tuple)):
        n = len(data)
    out: dict[str, Column] = {}
    for f in schema.fields:
        if f.name not in raw_cols:
            if n == 0:
                raw_cols[f.name] = []
            elif not f.nullable:
                raise SchemaError(f"missing field {f.name!r} (not nullable) in batch of {n} rows")
            else:
                raw_cols[f.name] = [None] * n
        raw = raw_cols[f.name]
        valid = raw_valid.get(f.name)
        if f.dtype in ("string", "bytes"):
            out[f.name] = _normalize_text(f, raw, valid, n)
        elif f.is_variable:
            out[f.name] = _normalize_variable(f, raw, valid, n)
        else:
            if isinstance(raw, (list, tuple)) and f.is_scalar and all(v is not None for v in raw):
                raw = _python_scalars(raw, f)
                if raw.dtype == object:
                    bad = next(i for i, v in enumerate(raw_cols[f.name]) if not isinstance(v, (int, float, bool, np.generic)))
                    raise SchemaError(f"field {f.name!r}: expected {f.dtype}, got {type(raw_cols[f.name][bad]).__name__} at row {bad}")
            elif isinstance(raw, (list, tuple)) and not raw:
                raw = np.zeros((0, *f.shape), dtype=f.numpy_dtype)
            out[f.name] = _normalize_dense(f, raw, valid, n)
    return out, n


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------

def _infer_field(name: str, raw: Any, valid: np.ndarray | None) -> Field:
    nullable = valid is not None and not bool(np.all(valid))
    if isinstance(raw, np.ndarray) and raw.dtype != object:
        if raw.dtype.kind in ("U", "S"):
            return Field(name, raw.dtype, nullable=nullable)
        return Field(name, raw.dtype, raw.shape[1:], nullable=nullable)
    items = list(raw)
    present = [v for v in items if v is not None]
    nullable = nullable or len(present) < len(items)
    if not present:
        raise SchemaError(f"cannot infer a schema for field {name!r}: it holds no values; pass a schema")
    if all(isinstance(v, str) for v in present):
        return Field(name, "string", nullable=nullable)
    if all(isinstance(v, (bytes, bytearray, memoryview)) for v in present):
        return Field(name, "bytes", nullable=nullable)
    try:
        arrays = [_row_array(v, name, i) for i, v in enumerate(present)]
    except SchemaError:
        raise SchemaError(f"cannot infer a schema for field {name!r}: values are ragged or of mixed types") from None
    dtype = np.result_type(*[a.dtype for a in arrays[:1000]])
    ranks = {a.ndim for a in arrays}
    if len(ranks) != 1:
        raise SchemaError(f"cannot infer a schema for field {name!r}: rows have different ranks {sorted(ranks)}")
    rank = ranks.pop()
    shape = tuple(
        arrays[0].shape[d] if all(a.shape[d] == arrays[0].shape[d] for a in arrays) and arrays[0].shape[d] > 0 else None
        for d in range(rank)
    )
    return Field(name, dtype, shape, nullable=nullable)


def infer_schema(data: Any) -> Schema:
    """Infer a :class:`Schema` from a first batch (dtype and shape of each column).

    A dimension is variable (``None``) when rows of the batch disagree on it. Fields with nulls are
    nullable. Pass an explicit schema when the first batch is not representative.
    """
    raw_cols, raw_valid = _as_columns(data)
    if not raw_cols:
        raise SchemaError("cannot infer a schema from an empty batch; pass a schema")
    return Schema([_infer_field(k, v, raw_valid.get(k)) for k, v in raw_cols.items()])
