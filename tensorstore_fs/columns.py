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


def _arrow_column(arr: Any, name: str) -> tuple[Any, np.ndarray | None]:
    """:func:`_arrow_to_python_column`, dictionary arrays decoded, pyarrow's errors as SchemaError."""
    import pyarrow as pa

    if not isinstance(arr, (pa.Array, pa.ChunkedArray)):
        raise SchemaError(f"field {name!r}: a column must be a pyarrow Array or ChunkedArray, got {type(arr).__name__}")
    try:
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode() if isinstance(arr, pa.Array) else pa.chunked_array(
                [c.dictionary_decode() for c in arr.chunks], type=arr.type.value_type)
        return _arrow_to_python_column(arr)
    except pa.ArrowException as e:
        raise SchemaError(f"field {name!r}: a pyarrow column of type {arr.type} cannot be read as tensor values: "
                          f"{e}") from None


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


def _refuse_duplicates(names: Sequence[str], what: str) -> None:
    """A batch naming a column twice is refused: which of the two to keep is anyone's guess."""
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise SchemaError(
                f"column {name!r} appears more than once in the batch ({what}, again at position {i}); "
                "a batch must name each field once"
            )
        seen.add(name)


def _as_columns(data: Any) -> tuple[dict[str, Any], dict[str, np.ndarray | None]]:
    """Any accepted batch -> ({name: raw column}, {name: validity or None})."""
    valid: dict[str, np.ndarray | None] = {}
    mod = type(data).__module__
    if mod.startswith("pyarrow"):
        import pyarrow as pa

        if isinstance(data, (pa.Table, pa.RecordBatch)):
            _refuse_duplicates(data.column_names, f"pyarrow {type(data).__name__}")
            cols: dict[str, Any] = {}
            for name, arr in zip(data.column_names, data.columns):
                cols[name], valid[name] = _arrow_column(arr, name)
            return cols, valid
    if mod.startswith("pandas") and hasattr(data, "columns") and hasattr(data, "iloc"):
        _refuse_duplicates([str(c) for c in data.columns], "pandas DataFrame")
        cols = {}
        for i, name in enumerate(data.columns):
            cols[str(name)], valid[str(name)] = _pandas_column(data.iloc[:, i])
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
                value, valid[name] = _arrow_column(value, name)
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


def _length(value: Any, name: str) -> int:
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            raise SchemaError(f"field {name!r}: a column must be an array with one entry per row, got a 0-d array")
        return int(value.shape[0])
    if isinstance(value, (str, bytes)):
        raise SchemaError(f"field {name!r}: a column must hold one entry per row, got a single {type(value).__name__} "
                          f"{value!r:.40} (wrap it in a list)")
    try:
        return len(value)
    except TypeError:
        raise SchemaError(
            f"field {name!r}: a column must be a sequence with one entry per row (array, list, Series), got "
            f"{type(value).__name__} {value!r:.40}"
        ) from None


# --------------------------------------------------------------------------------------------
# Casting
# --------------------------------------------------------------------------------------------

def _first(mask: np.ndarray) -> int:
    """Index of the first row of ``mask`` (``(n, ...)``) holding a True."""
    return int(np.argmax(mask.reshape(mask.shape[0], -1).any(axis=1)))


def _first_value(arr: np.ndarray, mask: np.ndarray) -> Any:
    """The first element of ``arr`` where ``mask`` is True, as a Python scalar."""
    return arr.reshape(-1)[int(np.argmax(mask.reshape(-1)))].item()


_LOSSY_HINT = "pass allow_lossy_cast=True to cast anyway"


def _cast_numeric(arr: np.ndarray, f: Field, row0: int = 0, *, single_row: bool = False,
                  lossy: bool = False) -> np.ndarray:
    """Cast ``arr`` to ``f``'s dtype, refusing any cast that loses a value.

    Refused unless ``lossy``: a float into an integer field, an integer out of the integer field's
    range, a finite value that becomes +-inf in a float field (``1e6`` into ``float16``). Rounding
    to the nearest representable float is not a loss (``0.1`` into ``float16``). With ``lossy``,
    numpy's ``astype`` semantics apply (integers wrap around, floats truncate toward zero, overflow
    gives +-inf), except that NaN, +-inf and floats outside the integer range are still refused
    for integer fields (numpy leaves their result undefined). Checks run only where a cast can
    lose, with whole-array numpy reductions.
    """
    target = f.numpy_dtype
    src = arr.dtype
    if src == target:
        return arr

    def where(mask: np.ndarray) -> str:
        return f"row {row0}" if single_row else f"row {row0 + _first(mask)}"

    if src.kind not in "biuf":
        raise SchemaError(f"field {f.name!r}: expected {f.dtype} values, got {src} at row {row0}")
    if target.kind == "b":
        if src.kind != "b":
            raise SchemaError(f"field {f.name!r}: expected bool values, got {src} (cast to bool is not safe) at row {row0}")
        return arr.astype(target)
    if target.kind in "iu":
        if src.kind == "f":
            return _float_to_int(arr, f, where, row0, lossy)
        if lossy or np.can_cast(src, target, casting="safe") or not arr.size:
            return arr.astype(target)
        info = np.iinfo(target)
        lo, hi = arr.min(), arr.max()  # two reductions; the mask is built only for a bad batch
        if lo < info.min or hi > info.max:
            bad = (arr < info.min) | (arr > info.max)
            raise SchemaError(
                f"field {f.name!r}: value {_first_value(arr, bad)} does not fit {f.dtype} "
                f"[{info.min}, {info.max}] at {where(bad)}; {_LOSSY_HINT} (integers wrap around)"
            )
        return arr.astype(target)
    # float target
    if src.kind == "b":
        raise SchemaError(f"field {f.name!r}: expected {f.dtype} values, got bool at row {row0}")
    with np.errstate(over="ignore"):
        out = arr.astype(target)
    if lossy or np.can_cast(src, target, casting="safe") or not arr.size or not _may_overflow(src, target):
        return out
    if _any_inf(out):
        bad = np.isinf(out) & ~np.isinf(arr) if src.kind == "f" else np.isinf(out)
        if bad.any():
            raise SchemaError(
                f"field {f.name!r}: value {_first_value(arr, bad)!r} overflows {f.dtype} "
                f"(largest finite {float(np.finfo(target).max):g}) at {where(bad)}; {_LOSSY_HINT} (it becomes inf)"
            )
    return out


_UINT_OF_SIZE = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def _any_inf(out: np.ndarray) -> bool:
    """Whether float array ``out`` holds +-inf: compares the bits with the sign masked off (10x
    faster than ``np.isinf`` on float16, which numpy computes element by element in software)."""
    uint = _UINT_OF_SIZE.get(out.dtype.itemsize)
    if uint is None or not out.dtype.isnative:
        return bool(np.isinf(out).any())
    inf = np.array(np.inf, dtype=out.dtype).view(uint)
    return bool(((out.view(uint) & uint(np.iinfo(uint).max >> 1)) == inf).any())


def _may_overflow(src: np.dtype, target: np.dtype) -> bool:
    """Whether some finite ``src`` value becomes infinite in float dtype ``target``."""
    if src.kind == "f":
        return np.finfo(src).max > np.finfo(target).max
    return float(np.iinfo(src).max) > float(np.finfo(target).max)  # ints: only 16-bit floats


def _float_to_int(arr: np.ndarray, f: Field, where: Any, row0: int, lossy: bool) -> np.ndarray:
    """Floats into an integer field: refused, or with ``lossy`` truncated toward zero when finite
    and inside the field's range."""
    target = f.numpy_dtype
    if not lossy:
        if not arr.size:
            return arr.astype(target)
        frac = ~(arr == np.trunc(arr))  # True for fractions, NaN and +-inf
        at = where(frac) if frac.any() else f"row {row0}"
        value = _first_value(arr, frac) if frac.any() else arr.reshape(-1)[0].item()
        raise SchemaError(
            f"field {f.name!r}: expected {f.dtype} values, got {arr.dtype}; floats are not cast to integers "
            f"(at {at}): value {value!r}; {_LOSSY_HINT} (truncates toward zero)"
        )
    info = np.iinfo(target)
    if arr.dtype.itemsize < 4:  # float16 cannot hold the bounds of 32- and 64-bit integers
        arr = arr.astype(np.float32)
    with np.errstate(invalid="ignore"):
        t = np.trunc(arr)
        ok = (t >= float(info.min)) & (t < float(info.max) + 1.0)  # the +1 is exact for 8-32 bits, 2**63/2**64 above
    if not ok.all():
        bad = ~ok
        raise SchemaError(
            f"field {f.name!r}: value {_first_value(arr, bad)!r} has no {f.dtype} value (NaN, inf or outside "
            f"[{info.min}, {info.max}]) at {where(bad)}; allow_lossy_cast does not cover it"
        )
    return t.astype(target)


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


def _normalize_dense(f: Field, raw: Any, valid: np.ndarray | None, n: int, lossy: bool = False) -> Column:
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
        arr = _cast_numeric(arr, f, lossy=lossy)
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
        out[i] = _cast_numeric(a, f, i, single_row=True, lossy=lossy)
    return Column(f, out, None if mask.all() else mask, n)


def _normalize_variable(f: Field, raw: Any, valid: np.ndarray | None, n: int, lossy: bool = False) -> Column:
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
        arr = _cast_numeric(arr, f, lossy=lossy)
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
            out.append(_cast_numeric(a, f, i, single_row=True, lossy=lossy))
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


def _python_scalars(raw: Sequence[Any], f: Field, lossy: bool = False) -> np.ndarray:
    """A list of Python/numpy scalars -> array, naming the first value that is not a number of
    the field's kind. Integer fields keep exact Python ints (beyond int64 too) for the range check
    (with ``lossy``, out-of-range ints wrap around as numpy's ``astype`` does)."""
    dtype = f.numpy_dtype
    if not raw:
        return np.zeros((0,), dtype=dtype)
    types = set(map(type, raw))  # a few types, however many values
    foreign = {t for t in types if not issubclass(t, (int, float, np.integer, np.floating, np.bool_, np.ndarray))}
    if foreign:
        i, v = next((i, v) for i, v in enumerate(raw) if type(v) in foreign)
        raise SchemaError(f"field {f.name!r}: expected {f.dtype}, got {type(v).__name__} {v!r:.40} at row {i}")
    if np.ndarray in types:  # 0-d arrays are scalars
        bad = next((i for i, v in enumerate(raw) if isinstance(v, np.ndarray) and v.ndim), None)
        if bad is not None:
            raise SchemaError(f"field {f.name!r}: expected shape (), got {raw[bad].shape} at row {bad}")
    if dtype.kind in "iu" and all(issubclass(t, (int, np.integer)) and not issubclass(t, (bool, np.bool_)) for t in types):
        info = np.iinfo(dtype)
        if lossy:
            span = 1 << (8 * dtype.itemsize)
            return np.array([(int(v) - info.min) % span + info.min for v in raw], dtype=dtype)
        for i, v in enumerate(raw):
            if not info.min <= int(v) <= info.max:
                raise SchemaError(f"field {f.name!r}: value {int(v)} does not fit {f.dtype} [{info.min}, {info.max}] "
                                  f"at row {i}; {_LOSSY_HINT} (integers wrap around)")
        return np.array([int(v) for v in raw], dtype=dtype)
    if dtype.kind == "f" or any(issubclass(t, (float, np.floating)) for t in types):
        # one float64 array (what numpy makes of mixed Python numbers); the cast then checks it.
        # numpy warns "invalid value encountered in cast" for NaN numpy-float scalars inside a
        # list (mixed with Python floats); NaN is a legitimate value here
        try:
            with np.errstate(invalid="ignore"):
                return np.array(raw, dtype=np.float64)
        except OverflowError:  # a Python int beyond float64
            bad = next((i for i, v in enumerate(raw) if _beyond_float64(v)), 0)
            raise SchemaError(f"field {f.name!r}: value {raw[bad]} overflows {f.dtype} at row {bad}") from None
    return np.asarray(raw)


def _beyond_float64(v: Any) -> bool:
    try:
        float(v)
    except OverflowError:
        return True
    return False


def normalize_batch(data: Any, schema: Schema, *, allow_lossy_cast: bool = False) -> tuple[dict[str, Column], int]:
    """Validate ``data`` against ``schema``; return ``({name: Column}, rows)``.

    Values are cast to the fields' dtypes only when no value changes beyond float rounding: see
    :func:`_cast_numeric` for what ``allow_lossy_cast`` lets through.

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
    lengths = {k: _length(v, k) for k, v in raw_cols.items()}
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
            out[f.name] = _normalize_variable(f, raw, valid, n, allow_lossy_cast)
        else:
            if isinstance(raw, (list, tuple)) and f.is_scalar and all(v is not None for v in raw):
                raw = _python_scalars(raw, f, allow_lossy_cast)
            elif isinstance(raw, (list, tuple)) and not raw:
                raw = np.zeros((0, *f.shape), dtype=f.numpy_dtype)
            out[f.name] = _normalize_dense(f, raw, valid, n, allow_lossy_cast)
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
