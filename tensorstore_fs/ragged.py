"""Variable-shape rows of a batch as flat values plus offsets, without an object per row.

``Dataset.to_batches(flat_variable=True)`` hands a variable-shape field over as a
:class:`RaggedRows`: the values of all its rows back to back (a view of the decoded column), one
offset per row boundary and each row's shape. Token pipelines that pack sequences into
fixed-length blocks want exactly this; building a numpy view per row costs more than reading
the rows (see the README's benchmark notes).

>>> batch = next(ds.to_batches(columns=["tokens"], batch_size=256, flat_variable=True))
>>> toks = batch["tokens"]
>>> toks.values[toks.offsets[0]:toks.offsets[-1]]   # every token of the batch, in row order
>>> toks.lengths                                      # values per row
>>> toks[3]                                           # one row, as a view shaped like it

Padding such rows (``variable="pad"``) is bounded: :func:`padded_shape` gives a batch's padded
shape, each dimension the batch's own largest extent, and refuses one whose bytes would pass
the cap (``max_padded_bytes`` of the readers; by default the larger of :data:`PAD_FLOOR_BYTES`
and :data:`PAD_FACTOR` times the rows' own bytes), so a few rows of tiny but differently
oriented shapes, ``(1, 100000)`` and ``(100000, 1)``, cannot make a read allocate 1e10 values.
Stored shapes are checked before any row is handed out (:func:`shape_fault`, :func:`check_shapes`):
no negative dimension, no product that wraps around, the schema's fixed dimensions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

from ._checks import check_int
from .errors import CorruptDatasetError, InvalidArgumentError

if TYPE_CHECKING:
    from .schema import Schema

__all__ = ["PAD_FACTOR", "PAD_FLOOR_BYTES", "SHAPE_PREFIX", "RaggedRows", "check_max_padded_bytes", "check_shapes",
           "padded_shape", "shape_fault"]

SHAPE_PREFIX = "__shape__"  # a variable-shape field's row shapes are stored in column __shape__<name>

# the default cap on a padded batch's bytes: the larger of these 1 GiB and 16 times the bytes of
# the batch's rows themselves (a batch of long token rows pads to a few times its values; only
# shapes that disagree in every dimension pad to orders of magnitude more)
PAD_FLOOR_BYTES = 1 << 30
PAD_FACTOR = 16


def check_max_padded_bytes(value: Any) -> int | None:
    """``max_padded_bytes=`` checked: a positive int (bytes), or None for the default cap."""
    return check_int("max_padded_bytes", value, allow_none=True)


def _nbytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def padded_shape(name: str, shapes: np.ndarray, dtype: np.dtype, values: int,
                 max_padded_bytes: int | None = None) -> tuple[int, ...]:
    """The zero-padded shape of a batch of variable-shape rows, checked against the padding cap.

    Parameters
    ----------
    name : str
        The field (named in the error).
    shapes : numpy.ndarray
        ``(n, ndim)`` row shapes of the batch (zeros for null rows), checked non-negative.
    dtype : numpy.dtype
        The field's dtype.
    values : int
        Values the rows hold together (their unpadded size).
    max_padded_bytes : int, optional
        The cap on the padded batch's bytes; None: the larger of :data:`PAD_FLOOR_BYTES` and
        :data:`PAD_FACTOR` times the rows' own bytes.

    Returns
    -------
    tuple of int
        ``(n, *max extent per dimension)``: the batch's own widest extents, never a global one.

    Raises
    ------
    InvalidArgumentError
        The padded batch would take more bytes than the cap; the message names the field, the
        batch's rows, the shape and how to raise the cap or read without padding.
    """
    n, ndim = shapes.shape
    widest = [int(x) for x in shapes.max(axis=0)] if n else [0] * ndim
    itemsize = np.dtype(dtype).itemsize
    padded = n * itemsize
    for d in widest:  # Python ints: no wrap-around, however hostile the shapes
        padded *= d
    own = values * itemsize
    limit = max_padded_bytes if max_padded_bytes is not None else max(PAD_FLOOR_BYTES, PAD_FACTOR * own)
    if padded > limit:
        rows = sorted({int(i) for i in shapes.argmax(axis=0)})[:4]
        which = ", ".join(f"row {i} {tuple(int(x) for x in shapes[i])}" for i in rows)
        cap = (f"max_padded_bytes={max_padded_bytes}" if max_padded_bytes is not None else
               f"the default cap: the larger of {_nbytes(PAD_FLOOR_BYTES)} and {PAD_FACTOR}x the rows' own "
               f"{_nbytes(own)}")
        raise InvalidArgumentError(
            f"field {name!r}: padding this batch of {n} rows to its widest extent in each dimension would "
            f"allocate shape {(n, *widest)} of {np.dtype(dtype).name}, {_nbytes(padded)}, past the padding cap "
            f"of {_nbytes(limit)} ({cap}); the widest rows of the batch: {which}. Pass a larger "
            f"max_padded_bytes= to the reader, or read the field unpadded: variable='flat' (values plus "
            f"offsets) or variable='list' (one array per row; tf.data: variable='ragged')")
    return (n, *widest)


class RaggedRows:
    """Rows of one variable-shape field: row ``i`` is ``values[offsets[i]:offsets[i + 1]]``
    reshaped to ``shapes[i]`` (``None`` where ``valid`` is False).

    Parameters
    ----------
    values : numpy.ndarray
        1-D values of the field's dtype. Rows sit back to back in row order; ``offsets[0]``
        need not be 0 (a batch cut from a longer read shares that read's values).
    offsets : numpy.ndarray
        ``(n + 1,)`` int64, non-decreasing, within ``values``.
    shapes : numpy.ndarray
        ``(n, ndim)`` int64 row shapes (zeros for null rows).
    valid : numpy.ndarray, optional
        ``(n,)`` bool; None when every row is present.
    """

    __slots__ = ("values", "offsets", "shapes", "valid")

    def __init__(self, values: np.ndarray, offsets: np.ndarray, shapes: np.ndarray,
                 valid: np.ndarray | None = None) -> None:
        n = len(shapes)
        if values.ndim != 1 or offsets.shape != (n + 1,) or shapes.ndim != 2:
            raise InvalidArgumentError(f"RaggedRows needs 1-D values, (n + 1,) offsets and (n, ndim) shapes; got "
                             f"{values.shape}, {offsets.shape}, {shapes.shape}")
        if valid is not None and valid.shape != (n,):
            raise InvalidArgumentError(f"valid must have shape ({n},), got {valid.shape}")
        self.values, self.offsets, self.shapes, self.valid = values, offsets, shapes, valid

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    @property
    def lengths(self) -> np.ndarray:
        """Values per row (``(n,)`` int64)."""
        return np.diff(self.offsets)

    def __getitem__(self, key: Any) -> Any:
        """``rows[i]``: row ``i`` as a view (None for a null row); ``rows[a:b]``: a RaggedRows view."""
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise InvalidArgumentError("RaggedRows slices take step 1")
            stop = max(start, stop)
            valid = None if self.valid is None else self.valid[start:stop]
            return RaggedRows(self.values, self.offsets[start:stop + 1], self.shapes[start:stop], valid)
        i = int(key)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"row {key} of {len(self)}")
        if self.valid is not None and not self.valid[i]:
            return None
        return self.values[self.offsets[i]:self.offsets[i + 1]].reshape(self.shapes[i])

    @staticmethod
    def concat(parts: Sequence["RaggedRows"]) -> "RaggedRows":
        """The rows of ``parts`` one after the other, in one new values array (one copy)."""
        if not parts:
            raise InvalidArgumentError("RaggedRows.concat needs at least one part")
        values = np.concatenate([p.values[p.offsets[0]:p.offsets[-1]] for p in parts])
        offsets = np.zeros(sum(len(p) for p in parts) + 1, dtype=np.int64)
        np.cumsum(np.concatenate([p.lengths for p in parts]), out=offsets[1:])
        shapes = np.concatenate([p.shapes for p in parts])
        valid = None
        if any(p.valid is not None for p in parts):
            valid = np.concatenate([np.ones(len(p), bool) if p.valid is None else p.valid for p in parts])
        return RaggedRows(values, offsets, shapes, valid)

    def __iter__(self) -> Iterator[np.ndarray | None]:
        return (self[i] for i in range(len(self)))

    def to_list(self) -> list[np.ndarray | None]:
        """One view per row (None for null rows): what ``to_batches`` yields without ``flat_variable``."""
        return list(self)

    def __repr__(self) -> str:
        return f"RaggedRows({len(self)} rows, {int(self.offsets[-1] - self.offsets[0]) if len(self) else 0} values, {self.dtype})"


MAX_DIM = 2**31 - 1  # shape columns are int32 (docs/format.md): no row has a larger extent
MAX_ROW_BYTES = 2**60  # a row's values times the itemsize stay far inside int64 below this


def shape_fault(shp: np.ndarray, fixed: tuple[int | None, ...] | None = None, itemsize: int = 8,
                valid: np.ndarray | None = None) -> tuple[int, str] | None:
    """The first row whose stored shape no row can have, as ``(row, what is wrong)``; None when
    every shape is sound: each dimension ``>= 0`` and at most int32's largest, the row's bytes
    (the product times ``itemsize``, computed without wrapping) under 2**60, and the field's fixed
    dimensions (``fixed``: the schema's shape, None for a variable dimension) as the schema says
    (null rows, where ``valid`` is False, hold zeros).

    Vectorised: a min and a max over the column (and one pass over each fixed dimension) when
    every shape is sound; the per-row search runs only when that does not settle it."""
    n = len(shp)
    if n == 0:
        return None
    if shp.dtype.kind not in "iu":
        return 0, f"has shape values of dtype {shp.dtype}, not integers"
    # whole-array reductions (a reduction along axis 0 of an (n, 3) array costs 50x more)
    lo, hi = int(shp.min()), int(shp.max())
    sound = lo >= 0 and hi <= MAX_DIM and itemsize * max(hi, 0) ** shp.shape[1] < MAX_ROW_BYTES
    if not sound and lo >= 0 and hi <= MAX_DIM:  # the bound from each dimension's own largest extent
        bound = itemsize
        for h in np.ascontiguousarray(shp.T).max(axis=1).tolist():
            bound *= int(h)  # Python ints: the largest product any row can have, exactly
        sound = bound < MAX_ROW_BYTES
    fixed_ok = all(d is None or not (shp[:, k] != d).any() for k, d in enumerate(fixed or ()))
    if sound and fixed_ok:
        return None
    zeros = np.zeros(n, dtype=bool)
    negative, too_big, wrong = zeros, zeros, zeros
    if not sound:
        negative = (shp < 0).any(axis=1)
        wide = np.maximum(shp.astype(np.float64), 0)  # floats do not wrap: an overflowing product stays huge
        too_big = (shp > MAX_DIM).any(axis=1) | (np.prod(wide, axis=1) * itemsize >= MAX_ROW_BYTES)
    if not fixed_ok:  # (also where null rows' zeros lower the minimum)
        wrong = np.zeros(n, dtype=bool)
        for k, d in enumerate(fixed or ()):
            if d is not None:
                wrong |= shp[:, k] != d
        if valid is not None:
            wrong &= valid | (shp != 0).any(axis=1)  # a null row's zeros are its shape
    bad = np.flatnonzero(negative | too_big | wrong)
    if not len(bad):
        return None
    i = int(bad[0])
    shape = tuple(int(x) for x in shp[i])
    if negative[i]:
        return i, f"has shape {shape}: a negative dimension"
    if too_big[i]:
        count = 1
        for x in shape:
            count *= x
        return i, (f"has shape {shape}: {count} values, more than a row can hold (a dimension holds at most "
                   f"{MAX_DIM}, a row under 2**60 bytes)")
    return i, f"has shape {shape}, but the field's shape is {tuple(fixed or ())} (None: a variable dimension)"


def check_shapes(table: pa.Table | pa.RecordBatch, where: str, parts: list[tuple[int, str]] | None = None,
                 schema: "Schema | None" = None) -> None:
    """Check the stored shapes of every variable-shape column of ``table`` (its ``__shape__<name>``
    columns) with :func:`shape_fault` (with the fixed dimensions and itemsize of the field in
    ``schema``, where given): a bad one is a :class:`~tensorstore_fs.CorruptDatasetError` naming
    ``where`` (the file), the field and the row. ``parts``: ``(first row, label)`` of each part the
    table's rows come from, in order (e.g. ``(0, "row group 3")``), so that the error names the
    part and the row in it. Costs a min and a max over each shape column."""
    for name in table.column_names:
        if not name.startswith(SHAPE_PREFIX):
            continue
        col = table.column(name)
        field = name[len(SHAPE_PREFIX):]
        at = 0
        for chunk in col.chunks if isinstance(col, pa.ChunkedArray) else [col]:
            width = chunk.type.list_size if pa.types.is_fixed_size_list(chunk.type) else -1
            values = chunk.flatten().to_numpy(zero_copy_only=False)
            if width < 1 or len(values) != len(chunk) * width:
                raise CorruptDatasetError(f"{where}: field {field!r}: shape column {name!r} is {chunk.type} "
                                          f"holding {len(values)} values for {len(chunk)} rows")
            f = schema.field(field) if schema is not None and field in schema else None
            valid = None
            if f is not None and field in table.column_names and table.column(field).null_count:  # null rows: zeros
                payload = table.column(field)
                valid = np.asarray(payload.is_valid().to_numpy(zero_copy_only=False), bool)[at:at + len(chunk)]
            fault = (shape_fault(values.reshape(len(chunk), width)) if f is None else
                     shape_fault(values.reshape(len(chunk), width), f.shape, f.numpy_dtype.itemsize, valid))
            if fault is not None:
                row, part = at + fault[0], ""
                for start, label in parts or ():
                    if start <= at + fault[0]:
                        row, part = at + fault[0] - start, f"{label}: "
                raise CorruptDatasetError(f"{where}: {part}field {field!r}: row {row} {fault[1]}")
            at += len(chunk)
