"""Gathering rows by id in any order (a shuffled window): read the row groups they live in, then copy.

Dense fields (scalars without nulls, fixed-shape tensors without nulls) are copied with numpy
straight from each row group's zero-copy view — the decoded column, or the file's own bytes where
they are located (:meth:`~tensorstore_fs.parquet.rowgroups.OpenFile.values`) — into the batch
array (one copy); other fields go through Arrow ``take``. Variable-shape fields are padded per
batch (``variable="pad"``: to the batch's own widest extents, at most ``max_padded_bytes``), and
every row group's stored shapes are checked when it is read (a bad one is a
:class:`~tensorstore_fs.CorruptDatasetError` naming the file, the row group, the field and the row).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from .._pool import ALIGN, SMALL_BYTES, RecyclingPool, aligned_empty
from ..encoding import decode_column, storage_columns
from ..errors import CorruptDatasetError
from ..parquet.pages import locatable
from ..parquet.rowgroups import OpenFile
from ..ragged import check_shapes
from ..schema import Field, Schema

__all__ = ["Gatherer", "UNIT_CACHE"]

UNIT_CACHE = 6  # decoded row groups kept per worker (windows share their boundary row groups)


class _Unit:
    """One decoded row group and lazily made zero-copy numpy views of its dense columns."""

    def __init__(self, table: pa.Table, direct: dict[str, np.ndarray] | None = None, where: str = "") -> None:
        self.table = table
        self.where = where  # "<file>: row group <rg>", for errors about its rows
        self._views: dict[str, np.ndarray | None] = dict(direct or {})

    def dense(self, name: str, f: Any) -> np.ndarray | None:
        """``(rows, *shape)`` view of a null-free scalar or fixed-shape column, else None."""
        if name not in self._views:
            col = self.table.column(name)
            ok = (f.is_fixed_tensor or (f.is_scalar and f.dtype not in ("string", "bytes"))) and col.null_count == 0
            self._views[name] = np.asarray(decode_column(self.table.select([name]), f)[name]) if ok else None
        return self._views[name]


class Gatherer:
    """Batches of rows gathered from row groups, in the order asked for (one per stream and thread:
    it recycles batch arrays and caches per-batch bookkeeping).

    Parameters
    ----------
    schema : Schema
    columns : list of str
        The stream's fields, in output order.
    variable : {"list", "pad", "flat"}
        How variable-shape fields are decoded.
    max_padded_bytes : int, optional
        Cap on a padded variable-shape field's bytes in one batch
        (:func:`~tensorstore_fs.ragged.padded_shape`; None: the default cap).
    """

    def __init__(self, schema: Schema, columns: Sequence[str], variable: str,
                 max_padded_bytes: int | None = None) -> None:
        self.schema = schema
        self.columns = list(columns)
        self.variable = variable
        self.max_padded_bytes = max_padded_bytes
        self.pool = RecyclingPool()
        # per-batch bookkeeping that depends only on the columns and batch size, computed once
        self._field_cache: dict[tuple[str, ...], list[Field]] = {}
        self._layout_cache: dict[tuple[Any, ...], tuple[int, list, list]] = {}
        self._order_cache: dict[tuple[str, ...], list[str]] = {}

    def read_unit(self, f: OpenFile, rg: int, cols: list[str]) -> _Unit:
        """Row group ``rg`` of ``f``: located tensor columns viewed in the file, the rest decoded."""
        direct: dict[str, np.ndarray] = {}
        for name in cols:
            fld = self.schema.field(name)
            if locatable(fld):
                values = f.values(rg, name, fld.row_nbytes)
                if values is not None:
                    direct[name] = values.view(fld.numpy_dtype.newbyteorder("<")).reshape((len(values), *fld.shape))
        rest = [c for c in storage_columns(self.schema, cols) if c not in direct]
        table = f.read_row_group(rg, rest) if rest else pa.table({})
        check_shapes(table, f.name, [(0, f"row group {rg}")], self.schema)
        return _Unit(table, direct, f"{f.name}: row group {rg}")

    def batches(self, unit: Callable[[int], _Unit], units: np.ndarray, local: np.ndarray, sizes: list[int],
                cols: list[str]) -> Iterator[dict[str, Any]]:
        """Batches of ``sizes`` rows: row ``local[i]`` of row group ``units[i]``, in order.
        ``unit(u)`` reads (or finds) row group ``u``."""
        loaded = {int(u): unit(int(u)) for u in np.unique(units)}
        pos = 0
        for n in sizes:
            yield self._batch(loaded, units[pos:pos + n], local[pos:pos + n], cols)
            pos += n

    def _batch(self, loaded: dict[int, _Unit], units: np.ndarray, local: np.ndarray, cols: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        n = len(units)
        # runs of consecutive rows from one row group (the plan keeps a batch's rows grouped)
        cuts = np.flatnonzero(units[1:] != units[:-1]) + 1 if n > 1 else np.zeros(0, np.int64)
        starts = [0, *cuts.tolist()]
        runs = [(int(units[a]), local[a:b], slice(a, b)) for a, b in zip(starts, [*starts[1:], n])] if n else []
        arrow_fields, dense = [], []
        for name, f in zip(cols, self._fields_of(cols)):
            views = [loaded[u].dense(name, f) for u, _, _ in runs]  # one per run
            if any(v is None for v in views):
                arrow_fields.append(name)
            else:
                dense.append((name, f, views))
        for (name, f, views), values in zip(dense, self._batch_arrays(n, [f for _, f, _ in dense])):
            # one copy, straight into the batch. mode="clip": with the default mode="raise" numpy
            # buffers ``out`` (a second copy, 3-10x slower); the plan's indices are always in range
            if len(runs) == 1:
                views[0].take(runs[0][1], axis=0, out=values, mode="clip")
            else:
                for view, (_, idx, where) in zip(views, runs):
                    view.take(idx, axis=0, out=values[where], mode="clip")
            out[name] = values
        if arrow_fields:
            order = np.argsort(units, kind="stable")
            bounds = np.flatnonzero(np.diff(units[order])) + 1
            slots = {int(units[g[0]]): g for g in np.split(order, bounds)} if n else {}
            scols = storage_columns(self.schema, arrow_fields)
            pieces = []
            position = np.empty(n, dtype=np.int64)
            start = 0
            for u, where in slots.items():
                pieces.append(loaded[u].table.select(scols).take(pa.array(local[where])))
                position[where] = np.arange(start, start + len(where))
                start += len(where)
            table = pa.concat_tables(pieces).take(pa.array(position))
            try:
                for name in arrow_fields:
                    out.update(decode_column(table, self.schema.field(name), pad=self.variable == "pad",
                                             flat=self.variable == "flat", max_padded_bytes=self.max_padded_bytes))
            except CorruptDatasetError as e:  # row i of the batch is row local[i] of row group units[i]
                row = getattr(e, "row", None)
                if row is None or not 0 <= row < n:
                    raise
                msg = str(e).replace(f"row {row} ", f"row {int(local[row])} ", 1)
                raise CorruptDatasetError(f"{loaded[int(units[row])].where}: {msg}") from None
        return {name: out[name] for name in self.output_order(out)}

    def _fields_of(self, cols: list[str]) -> list[Field]:
        key = tuple(cols)
        fields = self._field_cache.get(key)
        if fields is None:
            fields = self._field_cache[key] = [self.schema.field(c) for c in cols]
        return fields

    def _batch_arrays(self, n: int, fields: list[Field]) -> list[np.ndarray]:
        """Uninitialised ``(n, *shape)`` arrays for ``fields``: large ones recycled from the pool,
        the small ones carved from one fresh block (one allocation a batch, each 64-byte aligned)."""
        key = (n, tuple(f.name for f in fields))
        layout = self._layout_cache.get(key)
        if layout is None:
            shapes = [(n, *f.shape) for f in fields]
            sizes = [math.prod(shape) * f.numpy_dtype.itemsize for shape, f in zip(shapes, fields)]
            small = [i for i, size in enumerate(sizes) if size < SMALL_BYTES]
            if len(small) < 2:
                small = []
            starts, total = [], 0
            for i in small:
                starts.append(total)
                total += -(-sizes[i] // ALIGN) * ALIGN
            carved = [(i, at, at + sizes[i], fields[i].numpy_dtype, shapes[i]) for i, at in zip(small, starts)]
            pooled = [(i, shapes[i], fields[i].numpy_dtype) for i in range(len(fields)) if i not in set(small)]
            if len(self._layout_cache) > 64:  # batch sizes vary only at epoch ends: stays tiny
                self._layout_cache.clear()
            layout = self._layout_cache[key] = (total, carved, pooled)
        total, carved, pooled = layout
        arrays: list[Any] = [None] * len(fields)
        if carved:
            _, block = aligned_empty((total,), np.dtype(np.uint8))
            for i, a, b, dtype, shape in carved:
                arrays[i] = block[a:b].view(dtype).reshape(shape)
        for i, shape, dtype in pooled:
            arrays[i] = self.pool.empty(shape, dtype)
        return arrays

    def output_order(self, out: dict[str, Any]) -> list[str]:
        """The keys of a batch in the stream's column order (each field, then its ``__shape``)."""
        key = tuple(out)
        order = self._order_cache.get(key)
        if order is None:
            order = []
            for name in self.columns:
                order += [k for k in (name, name + "__shape") if k in out]
            if len(self._order_cache) < 64:
                self._order_cache[key] = order
        return order
