"""HDF5 export (:func:`to_hdf5`) and import (:func:`from_hdf5`).

Files are written in "tsfs HDF5 layout 1" (``docs/hdf5.md``): one HDF5 dataset per field chunked
by whole samples, variable-shape fields as ``values`` / ``offsets`` / ``shapes``, null masks under
``__valid__/``, and the tensor schema as JSON in the file attributes. Plain HDF5 files written by
other tools are imported too: each dataset (equal length along axis 0) becomes a field.

A damaged or inconsistent file never surfaces as a raw ``OSError`` / ``KeyError`` /
``RuntimeError`` from h5py: every step of an import (opening, each attribute, each object, each
batch of rows read) turns such failures into :class:`CorruptDatasetError` naming the file and the
dataset or attribute, and a variable-shape field's offsets and shapes are checked before use.

``h5py`` is imported on first use (``pip install tensorstore_fs[hdf5]``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .. import __version__
from .._checks import check_int
from .._progress import progress_bar
from ..read.dataset import Dataset, open_dataset
from ..errors import (
    CorruptDatasetError,
    DatasetExistsError,
    DatasetNotFoundError,
    InvalidArgumentError,
    SchemaError,
    TensorstoreError,
    UnsupportedFormatError,
)
from ..predicates import Predicate
from ..schema import Field, Schema, parse_dtype
from ..writer import DatasetWriter

__all__ = ["to_hdf5", "from_hdf5", "LAYOUT", "LAYOUT_VERSION"]

logger = logging.getLogger(__name__)

LAYOUT = "tsfs HDF5 layout 1"
LAYOUT_VERSION = 1
VALID_GROUP = "__valid__"
CHUNK_BYTES = 1 << 20  # target bytes of one HDF5 chunk
BATCH_BYTES = 32 << 20  # target bytes of one batch moved between the formats
CACHE_BYTES = 8 << 20  # HDF5 chunk cache per dataset: holds a partly written chunk between batches
TEXT_ROW_BYTES = 64  # size guess for a string / bytes / variable row when sizing chunks and batches
COMPRESSIONS = (None, "gzip", "lzf")


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py is in the dev extras
        raise ImportError("HDF5 conversion needs h5py: pip install 'tensorstore_fs[hdf5]'") from e
    return h5py


def _pow2_rows(row_bytes: int, budget: int) -> int:
    """The largest power of two of rows of ``row_bytes`` that fits ``budget`` (at least 1)."""
    rows = max(1, budget // max(1, row_bytes))
    return 1 << (rows.bit_length() - 1)


def _row_bytes(f: Field) -> int:
    return f.row_nbytes if not (f.is_variable or f.dtype in ("string", "bytes")) else TEXT_ROW_BYTES


def _prefetch(items: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """Produce ``items`` in a background thread, so reading the next batch (Parquet decoding and
    HDF5 reads release the GIL in part) overlaps writing this one. An exception in the producer is
    re-raised here; a consumer that stops early stops the producer after its current item."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def offer(entry: tuple[str, Any]) -> None:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.05)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                offer(("item", item))
            offer(("end", None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            offer(("error", e))

    thread = threading.Thread(target=produce, name="tsfs-hdf5-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "error":
                raise item
            if kind == "end":
                return
            yield item
    finally:
        stop.set()
        thread.join()


# ================================================================================================
# Export
# ================================================================================================

@dataclass(frozen=True)
class _Plan:
    """How datasets are created: rows to preallocate (0 when a filter makes the count unknown), an
    upper bound on rows, rows per chunk (None: ~1 MiB of whole rows) and compression filters."""

    rows: int
    max_rows: int
    chunk_rows: int | None
    filters: Mapping[str, Any]

    def create(self, parent: Any, name: str, tail: tuple, dtype: Any, row_bytes: int, *, rows: int | None = None,
               chunk: int | None = None) -> Any:
        """A resizable dataset of ``(rows, *tail)`` chunked by whole rows."""
        chunk = chunk or self.chunk_rows or min(_pow2_rows(row_bytes, CHUNK_BYTES), max(1, self.max_rows))
        return parent.create_dataset(name, shape=(self.rows if rows is None else rows, *tail), maxshape=(None, *tail),
                                     dtype=dtype, chunks=(chunk, *tail), **self.filters)


def _put(dset: Any, start: int, values: Any) -> None:
    """Write ``values`` at row ``start``, growing the dataset when needed.

    ``write_direct`` hands the buffer straight to HDF5 (no copy, and no guessing by h5py, which
    turns an object array of equal-length byte rows into a 2-D array)."""
    stop = start + len(values)
    if dset.shape[0] < stop:
        dset.resize(stop, axis=0)
    if stop > start:
        dset.write_direct(np.ascontiguousarray(values), dest_sel=np.s_[start:stop])


def _row_valid(values: Any, n: int) -> np.ndarray:
    """Per-row validity of a decoded column (MaskedArray, object array or list with None)."""
    if isinstance(values, np.ma.MaskedArray):
        return ~np.ma.getmaskarray(values).reshape(n, -1).all(axis=1) if n else np.ones(0, bool)
    if isinstance(values, np.ndarray) and values.dtype != object:
        return np.ones(n, dtype=bool)
    return np.fromiter((v is not None for v in values), dtype=bool, count=n)


def _dense(values: Any, f: Field, start: int) -> np.ndarray:
    if isinstance(values, np.ma.MaskedArray):
        return values.filled(0) if np.ma.getmaskarray(values).any() else values.data
    return values


def _strings(values: Any, f: Field, start: int) -> np.ndarray:
    out = np.array(["" if v is None else v for v in values], dtype=object)
    for i, s in enumerate(out):
        if "\x00" in s:
            raise SchemaError(f"field {f.name!r}: row {start + i} holds a NUL character, which HDF5 "
                              "variable-length strings cannot store; use a bytes field")
    return out


def _bytes(values: Any, f: Field, start: int) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = np.frombuffer(b"" if v is None else v, dtype=np.uint8)
    return out


class _FieldOut:
    """One scalar / fixed-shape / text field: one dataset of ``(rows, *shape)``."""

    def __init__(self, h5: Any, f: Field, plan: _Plan, h5py: Any) -> None:
        dtype, self._prep = {
            "string": (h5py.string_dtype("utf-8"), _strings),
            "bytes": (h5py.vlen_dtype(np.uint8), _bytes),
        }.get(f.dtype, (f.numpy_dtype, _dense))
        self.field = f
        self.node = plan.create(h5, f.name, f.shape, dtype, _row_bytes(f))
        self.row_dsets = [self.node]

    def write(self, values: Any, start: int) -> None:
        _put(self.node, start, self._prep(values, self.field, start))


class _VariableOut:
    """One variable-shape field: group with flat ``values``, ``offsets`` (n+1) and ``shapes`` (n, ndim)."""

    def __init__(self, h5: Any, f: Field, plan: _Plan, h5py: Any) -> None:
        self.field = f
        self.node = h5.create_group(f.name)
        chunk = _pow2_rows(f.numpy_dtype.itemsize, min(CHUNK_BYTES, max(1, plan.max_rows) * TEXT_ROW_BYTES))
        self.values = plan.create(self.node, "values", (), f.numpy_dtype, 0, rows=0, chunk=chunk)
        self.offsets = plan.create(self.node, "offsets", (), np.int64, 8, rows=plan.rows + 1)
        self.shapes = plan.create(self.node, "shapes", (len(f.shape),), np.int64, 8 * len(f.shape))
        self.offsets[0] = 0
        self.pos = 0
        self.row_dsets = [self.shapes]

    def write(self, rows: list, start: int) -> None:
        ndim = len(self.field.shape)
        shapes = np.array([(0,) * ndim if r is None else r.shape for r in rows], dtype=np.int64)
        shapes = shapes.reshape(len(rows), ndim)
        parts = [r.reshape(-1) for r in rows if r is not None and r.size]
        flat = np.concatenate(parts) if parts else np.zeros(0, self.field.numpy_dtype)
        ends = self.pos + np.cumsum(shapes.prod(axis=1), dtype=np.int64)
        _put(self.values, self.pos, flat)
        _put(self.offsets, start + 1, ends)
        _put(self.shapes, start, shapes)
        self.pos += len(flat)

    def trim(self, rows: int) -> None:
        self.offsets.resize(rows + 1, axis=0)
        self.values.resize(self.pos, axis=0)


def _field_attrs(node: Any, f: Field) -> None:
    """Per-object copies of the field's schema entry, for plain h5py users (``tsfs_schema`` is the
    authority: HDF5 string attributes cannot hold NUL, so it is dropped from the description here)."""
    node.attrs.update({"description": f.description.replace("\x00", ""), "dtype": f.dtype,
                       "shape": json.dumps(list(f.shape)), "nullable": f.nullable})


def _check_target(path: Any, overwrite: bool) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(f"path must be a local file path, got {type(path).__name__}")
    raw = os.fspath(path).removeprefix("file://")
    if "://" in raw:
        raise InvalidArgumentError(f"to_hdf5 writes local files only, got {path!r}")
    target = Path(raw)
    if not target.parent.is_dir():
        raise InvalidArgumentError(f"{target}: directory {str(target.parent)!r} does not exist")
    if target.is_dir():
        raise DatasetExistsError(f"{target} is a directory; refusing to replace it with an HDF5 file")
    if target.exists() and not overwrite:
        raise DatasetExistsError(f"{target} already exists; pass overwrite=True to replace it")
    return target


def _filters(compression: str | None, compression_opts: Any) -> dict[str, Any]:
    if compression not in COMPRESSIONS:
        raise InvalidArgumentError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    if compression_opts is not None and compression != "gzip":
        raise InvalidArgumentError(f"compression_opts applies to gzip only (level 0-9), got it with {compression!r}")
    if compression == "gzip" and compression_opts is not None and compression_opts not in range(10):
        raise InvalidArgumentError(f"gzip compression_opts must be a level 0-9, got {compression_opts!r}")
    return {"compression": compression, "compression_opts": compression_opts} if compression else {}


def _publish(tmp: Path, target: Path, overwrite: bool) -> None:
    """Move the finished file into place; without ``overwrite`` never replace a file that appeared."""
    if overwrite:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise DatasetExistsError(f"{target} already exists; pass overwrite=True to replace it") from None
    os.unlink(tmp)


def _export(h5: Any, ds: Dataset, schema: Schema, scanner: Any, plan: _Plan, progress: bool, h5py: Any) -> int:
    h5.attrs.update({"tsfs_layout": LAYOUT, "tsfs_layout_version": LAYOUT_VERSION, "tsfs_schema": schema.to_json(),
                     "tsfs_source_url": ds.url, "tsfs_source_version": ds.version,
                     "tsfs_writer": f"tensorstore_fs {__version__}"})
    outs = [(_VariableOut if f.is_variable else _FieldOut)(h5, f, plan, h5py) for f in schema.fields]
    valid_group = h5.create_group(VALID_GROUP) if any(f.nullable for f in schema.fields) else None
    valids = {f.name: plan.create(valid_group, f.name, (), bool, 1) for f in schema.fields if f.nullable}
    for out in outs:
        _field_attrs(out.node, out.field)
    rows = 0
    with progress_bar(progress, plan.rows or None, "to_hdf5") as bar:
        for batch in _prefetch(scanner):
            n = len(batch[schema.names[0]])
            for out in outs:
                values = batch[out.field.name]
                out.write(values, rows)
                if out.field.nullable:
                    _put(valids[out.field.name], rows, _row_valid(values, n))
            rows += n
            bar.update(n)
    for dset in [d for out in outs for d in out.row_dsets] + list(valids.values()):
        dset.resize(rows, axis=0)
    for out in outs:
        if isinstance(out, _VariableOut):
            out.trim(rows)
    h5.attrs["tsfs_rows"] = rows
    return rows


def to_hdf5(
    ds_or_url: Dataset | str,
    path: str | os.PathLike,
    columns: Sequence[str] | None = None,
    filter: Any = None,
    predicate: Predicate | None = None,
    compression: str | None = None,
    compression_opts: int | None = None,
    chunk_rows: int | None = None,
    batch_size: int | None = None,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> str:
    """Export a dataset version to one HDF5 file in "tsfs HDF5 layout 1" (see ``docs/hdf5.md``).

    Parameters
    ----------
    ds_or_url : Dataset or str
        An opened dataset, or its URL (the newest version is exported).
    path : str or os.PathLike
        Local path of the HDF5 file to create.
    columns : list of str, optional
        Fields to export (all by default), in this order.
    filter : pyarrow.compute.Expression, optional
        Row filter on scalar fields, as in :meth:`Dataset.to_batches`.
    predicate : Predicate, optional
        Row predicate, as in :meth:`Dataset.to_batches`.
    compression : {None, "gzip", "lzf"}
        HDF5 filter applied to every dataset.
    compression_opts : int, optional
        gzip level 0-9.
    chunk_rows : int, optional
        Rows per HDF5 chunk of every row-indexed dataset. By default each field gets the largest
        power of two of rows whose chunk fits 1 MiB (at least one row, at most the row count).
    batch_size : int, optional
        Rows read per batch (default: a power of two of about 32 MiB of rows).
    overwrite : bool
        Replace an existing file at ``path``.
    storage_options : mapping, optional
        fsspec options used to open ``ds_or_url`` when it is a URL.
    progress : bool
        Show a progress bar.

    Returns
    -------
    str
        The path written (``file://`` stripped).

    Raises
    ------
    DatasetExistsError
        ``path`` exists and ``overwrite`` is False.
    SchemaError
        A string holds a NUL character (HDF5 strings cannot store it). Nothing is left at ``path``.
    InvalidArgumentError
        Bad columns, filter, compression or sizes.

    Notes
    -----
    The file is written under a temporary name in the same directory and renamed into place only
    when complete: a failure leaves nothing at ``path``. Rows are streamed batch by batch.
    """
    h5py = _h5py()
    ds = ds_or_url if isinstance(ds_or_url, Dataset) else open_dataset(ds_or_url, storage_options=storage_options)
    filters = _filters(compression, compression_opts)
    chunk_rows = check_int("chunk_rows", chunk_rows, allow_none=True)
    batch_size = check_int("batch_size", batch_size, allow_none=True)
    target = _check_target(path, overwrite)
    probe = ds.scanner(columns, filter, predicate)  # validates columns, filter and predicate
    schema = ds.schema.select(probe.columns)
    batch_size = batch_size or min(_pow2_rows(sum(_row_bytes(f) for f in schema.fields), BATCH_BYTES), 1 << 16)
    scanner = ds.scanner(probe.columns, filter, predicate, batch_size)
    known = filter is None and predicate is None
    plan = _Plan(rows=len(ds) if known else 0, max_rows=len(ds), chunk_rows=chunk_rows, filters=filters)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:12]}")
    t0 = time.perf_counter()
    try:
        with h5py.File(tmp, "w", rdcc_nbytes=CACHE_BYTES) as h5:
            rows = _export(h5, ds, schema, scanner, plan, progress, h5py)
        _publish(tmp, target, overwrite)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("%s: exported %d rows of %s (version %d) in %.2fs", target, rows, ds.url, ds.version,
                time.perf_counter() - t0)
    return str(target)


# ================================================================================================
# Import
# ================================================================================================

@dataclass(frozen=True)
class _Source:
    """One field to import: its schema entry, a reader of rows ``[a, b)`` and where it comes from."""

    field: Field
    read: Callable[[int, int], Any]
    rows: int
    chunk_rows: int
    where: str


def _with_nulls(values: Any, valid: np.ndarray) -> Any:
    """Mark invalid rows null in the form DatasetWriter accepts."""
    if valid.all():
        return values
    if isinstance(values, list):
        return [v if ok else None for v, ok in zip(values, valid)]
    if values.dtype == object:
        out = values.copy()
        out[~valid] = None
        return out
    mask = np.broadcast_to((~valid).reshape((-1,) + (1,) * (values.ndim - 1)), values.shape)
    return np.ma.MaskedArray(values, mask=mask)


_RAW_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError, IndexError, OverflowError, MemoryError)


@contextlib.contextmanager
def _damaged(where: str, what: str) -> Iterator[None]:
    """Turn what h5py raises for a damaged file (``OSError``, ``KeyError``, ``RuntimeError`` ...) into
    :class:`CorruptDatasetError` naming the file and ``what`` was being read; our own errors pass."""
    try:
        yield
    except TensorstoreError:
        raise
    except _RAW_ERRORS as e:
        raise CorruptDatasetError(f"{where}: cannot read {what} (damaged file?): {type(e).__name__}: {e}") from None


def _attr(obj: Any, name: str, where: str, default: Any = None) -> Any:
    """Attribute ``name`` of an HDF5 object (``default`` when absent); damage names the attribute."""
    with _damaged(where, f"attribute {name!r} of {obj.name}"):
        return obj.attrs.get(name, default)


def _child(parent: Any, name: str, kind: Any, where: str, what: str) -> Any:
    """``parent[name]``, which must be an h5py ``kind`` (Group or Dataset)."""
    with _damaged(where, what):  # not parent.get(): it turns the damage h5py reports into "absent"
        node = parent[name] if name in parent else None
    if not isinstance(node, kind):
        found = "nothing" if node is None else type(node).__name__
        raise CorruptDatasetError(f"{where}: {what} should be an HDF5 {kind.__name__}, found {found}")
    return node


def _variable_reader(group: Any, f: Field, where: str, h5py: Any) -> tuple[Callable[[int, int], list], int, int]:
    """Reader of a variable-shape field's group, its row count and chunk rows; the layout is checked
    here and every batch's offsets and shapes before they are used."""
    values, offsets, shapes = (_child(group, k, h5py.Dataset, where, f"{group.name}/{k}")
                               for k in ("values", "offsets", "shapes"))
    ndim = len(f.shape)
    rows = shapes.shape[0] if shapes.ndim == 2 and shapes.shape[1] == ndim else -1
    if values.ndim != 1 or offsets.shape != (rows + 1,) or rows < 0:
        raise CorruptDatasetError(f"{where}: {group.name}: values {values.shape}, offsets {offsets.shape} and shapes "
                                  f"{shapes.shape} are not (n_values,), (rows + 1,) and (rows, {ndim})")
    if values.dtype != f.numpy_dtype or offsets.dtype.kind not in "iu" or shapes.dtype.kind not in "iu":
        raise CorruptDatasetError(f"{where}: {group.name}: values of {values.dtype} (field is {f.dtype}), offsets of "
                                  f"{offsets.dtype}, shapes of {shapes.dtype}: expected integer offsets and shapes")
    n_values = values.shape[0]
    fixed = np.array([d if d is not None else -1 for d in f.shape], dtype=np.int64)

    def read(a: int, b: int) -> list:
        offs, shp = offsets[a:b + 1].astype(np.int64), shapes[a:b].astype(np.int64).reshape(b - a, ndim)
        if offs[0] < 0 or offs[-1] > n_values or (np.diff(offs) < 0).any():
            raise CorruptDatasetError(f"{where}: {group.name}/offsets of rows {a}-{b} are not increasing within "
                                      f"0..{n_values} (the values dataset's length)")
        bad_dims = (shp < 0) | ((fixed >= 0) & (shp != fixed) & shp.any(axis=1, keepdims=True))  # null: zeros
        if bad_dims.any():
            i = int(np.flatnonzero(bad_dims.any(axis=1))[0])
            raise CorruptDatasetError(f"{where}: {group.name}/shapes row {a + i} is {tuple(shp[i].tolist())}, the "
                                      f"field's shape is {f.shape}")
        need = shp.astype(np.float64).prod(axis=1)  # exact below 2**53, and a span never is larger
        bad = np.flatnonzero(np.diff(offs) != need)
        if len(bad):
            i = int(bad[0])
            raise CorruptDatasetError(f"{where}: {group.name}: row {a + i} spans {offs[i + 1] - offs[i]} values but "
                                      f"its shape {tuple(shp[i].tolist())} needs {need[i]:.0f}")
        flat = values[offs[0]:offs[-1]]
        rel = offs - offs[0]
        return [flat[rel[i]:rel[i + 1]].reshape(shp[i]) for i in range(b - a)]
    return read, rows, _chunk0(shapes)


def _text_reader(dset: Any, h5py: Any) -> Callable[[int, int], np.ndarray]:
    """Strings labelled UTF-8 -> str; ASCII-labelled strings and vlen uint8 -> bytes."""
    info = h5py.check_string_dtype(dset.dtype)
    if info is not None and info.encoding == "utf-8":
        return lambda a, b: dset.asstr()[a:b]
    if info is not None:
        return lambda a, b: dset[a:b].astype(object)
    return lambda a, b: _as_bytes(dset[a:b])


def _as_bytes(rows: np.ndarray) -> np.ndarray:
    out = np.empty(len(rows), dtype=object)
    for i, r in enumerate(rows):
        out[i] = r.tobytes()
    return out


def _tsfs_attrs(h5: Any, where: str) -> tuple[Schema, int]:
    """The schema and row count recorded in a tsfs-layout file's root attributes."""
    version = _attr(h5, "tsfs_layout_version", where)
    version = version.item() if isinstance(version, np.generic) else version
    if version != LAYOUT_VERSION:
        raise UnsupportedFormatError(f"{where}: tsfs HDF5 layout version {version!r:.60} is not supported "
                                     f"(this library reads version {LAYOUT_VERSION})")
    values = {}
    for name in ("tsfs_schema", "tsfs_rows"):
        values[name] = _attr(h5, name, where)
        if values[name] is None:
            raise CorruptDatasetError(f"{where}: tsfs file attribute {name!r} is missing")
    try:
        schema = Schema.from_json(values["tsfs_schema"])
    except (TensorstoreError, *_RAW_ERRORS) as e:
        raise CorruptDatasetError(f"{where}: tsfs file attribute 'tsfs_schema' is not a valid schema: {e}") from None
    rows = values["tsfs_rows"]
    rows = rows.item() if isinstance(rows, np.generic) else rows
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        raise CorruptDatasetError(f"{where}: tsfs file attribute 'tsfs_rows' is {rows!r:.60}, not a row count")
    return schema, rows


def _tsfs_source(h5: Any, f: Field, where: str, h5py: Any) -> _Source:
    """One field of a tsfs-layout file, its objects checked against the schema."""
    what = f"/{f.name} (field {f.name!r})"
    if f.is_variable:
        group = _child(h5, f.name, h5py.Group, where, what)
        read, n, chunk = _variable_reader(group, f, where, h5py)
    else:
        node = _child(h5, f.name, h5py.Dataset, where, what)
        text = f.dtype in ("string", "bytes")
        if node.ndim < 1 or node.shape[1:] != (() if text else f.shape) or (
                not text and node.dtype != f.numpy_dtype):
            raise CorruptDatasetError(f"{where}: {what} is {node.dtype} {node.shape}, the schema says {f.dtype} "
                                      f"(rows, *{f.shape})")
        with _damaged(where, f"the type of {what}"):
            read = _text_reader(node, h5py) if text else _slicer(node)
        n, chunk = node.shape[0], _chunk0(node)
    if f.nullable:
        vwhat = f"/{VALID_GROUP}/{f.name} (nulls of field {f.name!r})"
        valid = _child(h5, f"{VALID_GROUP}/{f.name}", h5py.Dataset, where, vwhat)
        if valid.shape != (n,) or valid.dtype != np.bool_:
            raise CorruptDatasetError(f"{where}: {vwhat} is {valid.dtype} {valid.shape}, expected bool ({n},)")
        read = (lambda r, v: lambda a, b: _with_nulls(r(a, b), v[a:b]))(read, valid)
    return _Source(f, read, n, chunk, f"/{f.name}")


def _tsfs_sources(h5: Any, where: str, h5py: Any) -> tuple[Schema, list[_Source]]:
    """Fields of a file in our own layout, restored exactly from its attributes."""
    schema, rows = _tsfs_attrs(h5, where)
    sources = [_tsfs_source(h5, f, where, h5py) for f in schema.fields]
    for s in sources:
        if s.rows != rows:
            raise CorruptDatasetError(f"{where}: {s.where} holds {s.rows} rows, the file records {rows}")
    return schema, sources


def _slicer(dset: Any) -> Callable[[int, int], np.ndarray]:
    return lambda a, b: dset[a:b]


def _chunk0(dset: Any) -> int:
    return dset.chunks[0] if dset.chunks else 1


def _dtype_text(dt: np.dtype, h5py: Any) -> str:
    if h5py.check_ref_dtype(dt) is not None:
        return f"object reference ({dt})"
    return f"compound {dt}" if dt.names else str(dt)


def _field_name(path: str) -> str:
    """HDF5 path -> field name: ``/train/image`` -> ``train.image``."""
    return path.lstrip("/").replace("/", ".")


def _plain_field(name: str, dset: Any, desc: str, h5py: Any) -> tuple[Field, Callable[[int, int], Any]]:
    dt = dset.dtype
    vlen, text = h5py.check_vlen_dtype(dt), h5py.check_string_dtype(dt)
    if (vlen is not None or text is not None) and dset.ndim != 1:
        raise SchemaError("variable-length and string data are supported in 1-D datasets only")
    if text is not None or (vlen == np.uint8 and dset.attrs.get("dtype") == "bytes"):
        kind = "string" if text is not None and text.encoding == "utf-8" else "bytes"
        return Field(name, kind, description=desc), _text_reader(dset, h5py)
    if vlen is not None:
        return Field(name, parse_dtype(vlen, field_name=name), (None,), description=desc), lambda a, b: list(dset[a:b])
    return Field(name, parse_dtype(dt, field_name=name), dset.shape[1:], description=desc), _slicer(dset)


def _plain_source(path: str, dset: Any, where: str, h5py: Any) -> _Source:
    """A dataset of a file written by another tool -> one field (name: path with '/' -> '.')."""
    with _damaged(where, f"dataset {path!r}"):
        what = f"{where}: dataset {path!r} (dtype {_dtype_text(dset.dtype, h5py)}, shape {dset.shape})"
    if dset.ndim == 0:
        raise SchemaError(f"{what} is 0-d: it has no rows; choose the datasets to import with datasets=[...]")
    desc = _attr(dset, "description", where, "")
    try:
        with _damaged(where, f"dataset {path!r}"):
            field, read = _plain_field(_field_name(path), dset, desc if isinstance(desc, str) else "", h5py)
    except SchemaError as e:
        raise SchemaError(f"{what} cannot be imported: {e}") from None
    return _Source(field, read, dset.shape[0], _chunk0(dset), path)


def _plain_datasets(h5: Any, where: str, selected: Sequence[str] | None, h5py: Any) -> list[tuple[str, Any]]:
    """(path, h5py.Dataset) for every dataset, or for the selected paths (a group: all under it)."""
    def under(node: Any) -> list[tuple[str, Any]]:
        if isinstance(node, h5py.Dataset):
            return [(node.name, node)]
        found: list[tuple[str, Any]] = []
        node.visititems(lambda _, obj: found.append((obj.name, obj)) if isinstance(obj, h5py.Dataset) else None)
        return found

    if selected is None:
        with _damaged(where, "the list of its objects"):
            return under(h5)
    if isinstance(selected, str):
        raise InvalidArgumentError(f"datasets must be a list of HDF5 paths, got the string {selected!r}")
    out = []
    for p in selected:
        with _damaged(where, f"HDF5 object {p!r}"):
            if p not in h5:
                raise InvalidArgumentError(f"{where}: no HDF5 object {p!r}; datasets are {[n for n, _ in under(h5)]}")
            out += under(h5[p])
    return out


def _select(sources: list[_Source], names: Sequence[str], where: str) -> list[_Source]:
    by_name = {s.field.name: s for s in sources}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise SchemaError(f"{where}: no dataset for field(s) {missing}; the file offers {list(by_name)}")
    return [by_name[n] for n in names]


def _sources(h5: Any, where: str, datasets: Sequence[str] | None, schema: Schema | None,
             h5py: Any) -> tuple[Schema, list[_Source]]:
    with _damaged(where, "the root attributes"):
        tsfs = "tsfs_layout_version" in h5.attrs
    if tsfs:
        file_schema, sources = _tsfs_sources(h5, where, h5py)
        names = [_field_name(str(p)) for p in datasets] if datasets is not None else file_schema.names
        meta = file_schema.metadata
    else:
        pairs = _plain_datasets(h5, where, datasets, h5py)
        if schema is not None:  # only the datasets the schema asks for need to be importable
            pairs = [(p, d) for p, d in pairs if _field_name(p) in schema]
        sources = [_plain_source(p, d, where, h5py) for p, d in pairs]
        if not sources:
            raise SchemaError(f"{where}: no HDF5 datasets to import")
        names, meta = [s.field.name for s in sources], {}
    sources = _select(sources, schema.names if schema is not None else names, where)
    lengths = {s.where: s.rows for s in sources}
    if len(set(lengths.values())) > 1:
        listing = ", ".join(f"{k}: {v}" for k, v in lengths.items())
        raise SchemaError(f"{where}: datasets differ in length along axis 0 ({listing}); every field needs one "
                          "entry per row: choose equal-length datasets with datasets=[...]")
    return schema or Schema([s.field for s in sources], meta), sources


def _open_file(path: Any, h5py: Any) -> str:
    where = os.fspath(path)
    if not os.path.exists(where):
        raise DatasetNotFoundError(f"{where}: no such HDF5 file")
    if not os.path.isfile(where) or not h5py.is_hdf5(where):
        raise CorruptDatasetError(f"{where}: not an HDF5 file")
    return where


def from_hdf5(
    path: str | os.PathLike,
    url: str,
    datasets: Sequence[str] | None = None,
    schema: Schema | None = None,
    mode: str = "error",
    storage_options: Mapping[str, Any] | None = None,
    batch_rows: int | None = None,
    progress: bool = False,
    **writer_options: Any,
) -> Dataset:
    """Import an HDF5 file as a dataset at ``url``.

    A file written by :func:`to_hdf5` gets its exact schema back (variable shapes, nullability,
    descriptions). In any other file every HDF5 dataset (or each selected one) becomes a field
    named after its path, ``/`` replaced by ``.`` (``/train/image`` -> ``train.image``): shape
    ``dset.shape[1:]`` (a scalar for 1-D), 1-D variable-length numeric data as shape ``(None,)``,
    strings labelled UTF-8 as ``string`` and other strings as ``bytes``.

    Parameters
    ----------
    path : str or os.PathLike
        The HDF5 file.
    url : str
        Dataset root to write (local path or fsspec URL).
    datasets : list of str, optional
        HDF5 paths to import (a group imports every dataset under it); all by default.
    schema : Schema, optional
        Schema to write with; its field names pick the datasets, and values are cast to it.
    mode : {"error", "overwrite", "append"}
        As in :class:`DatasetWriter`.
    storage_options : mapping, optional
        fsspec options for ``url``.
    batch_rows : int, optional
        Rows read per step (default: about 32 MiB, a multiple of the HDF5 chunk rows).
    progress : bool
        Show a progress bar.
    **writer_options
        ``row_group_bytes``, ``shard_bytes``, ``compression``, ``scalar_compression``.

    Returns
    -------
    Dataset
        The committed version.

    Raises
    ------
    DatasetNotFoundError
        ``path`` does not exist.
    CorruptDatasetError
        ``path`` is not an HDF5 file, is damaged (h5py cannot read an attribute, an object or
        rows: the message names which), or a tsfs-layout file is inconsistent.
    SchemaError
        Datasets of different lengths along axis 0, or a dataset that cannot be a field (0-d,
        compound, reference, complex or other unsupported dtype), each naming file and dataset.

    Notes
    -----
    Everything goes through one :class:`DatasetWriter`: a failure part-way commits nothing.
    """
    h5py = _h5py()
    batch_rows = check_int("batch_rows", batch_rows, allow_none=True)
    if schema is not None and not isinstance(schema, Schema):
        raise InvalidArgumentError(f"schema must be a tensorstore_fs.Schema, got {type(schema).__name__}")
    where = _open_file(path, h5py)
    with _damaged(where, "the file as HDF5"):
        h5 = h5py.File(where, "r", rdcc_nbytes=CACHE_BYTES)
    try:
        with _damaged(where, "the file's objects"):  # the steps inside name the object when they can
            target_schema, sources = _sources(h5, where, datasets, schema, h5py)
        rows = sources[0].rows
        step = batch_rows or _auto_batch_rows(sources)
        writer = DatasetWriter(url, target_schema, mode=mode, storage_options=storage_options, **writer_options)
        with writer, progress_bar(progress, rows, "from_hdf5") as bar:
            done = 0
            for n, batch in _prefetch(_read_steps(sources, rows, step, where)):
                try:
                    writer.write(batch)
                except SchemaError as e:
                    raise SchemaError(f"{where}: rows {done}-{done + n}: {e}") from None
                done += n
                bar.update(n)
    finally:
        with contextlib.suppress(*_RAW_ERRORS):
            h5.close()
    logger.info("%s: imported %d rows from %s", url, rows, where)
    return open_dataset(url, version=writer.manifest.version, storage_options=storage_options)


def _read_steps(sources: list[_Source], rows: int, step: int, where: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for a in range(0, rows, step):
        b = min(rows, a + step)
        batch = {}
        for s in sources:
            with _damaged(where, f"rows {a}-{b} of {s.where}"):
                batch[s.field.name] = s.read(a, b)
        yield b - a, batch


def _auto_batch_rows(sources: list[_Source]) -> int:
    """About BATCH_BYTES of rows, rounded down to a multiple of the largest source chunk."""
    step = max(1, BATCH_BYTES // max(1, sum(_row_bytes(s.field) for s in sources)))
    chunk = max(s.chunk_rows for s in sources)
    return step - step % chunk if step >= chunk else step
